#!/usr/bin/perl

# The lifecycle suite: nginx's ordinary events while clients scrape every
# format, and after each one no worker died on a signal other than the test's
# own kill -9, no [alert] beyond those provoked, every answer a 200 listing the
# right processes, the server's figures adding up. Each of the five crashes of
# issue 20 is one case here: reloads that remove the location or fail after
# parsing (then a respawn), worker_shutdown_timeout with answers waiting, a
# status subrequest whose parent dies first, master_process off with reloads.

use warnings;
use strict;

use FindBin;
use lib "$FindBin::Bin/lib";

use IO::Socket::INET;
use POSIX qw(WNOHANG);
use Test::More;
use Time::HiRes qw(time sleep);
use NginxTest;
use Lifecycle qw(conf start_scrapers start_h2_scraper stop_scrapers signal_exits check_server
    wait_respawn running_workers);

# Without Debian's Lua module all but the subrequests of Lua's threads run
# (Lifecycle::conf leaves those out).
my $NO_LUA = "Debian's Lua module is not installed";

# Under memcheck (scripts/memcheck) every event once, with fewer repeats.
my $QUICK = $NginxTest::VALGRIND;
my $RELOADS = $QUICK ? 3 : 15;
my $REPEATS = $QUICK ? 3 : 20;

my $t = NginxTest->new;
my $port = $t->port(1);
$t->write_file_expand('nginx.conf', conf(workers => 2, interval => '1s'));
$t->run;
check_server($t, $port, 'start');
my @scrapers = (start_scrapers($t, $port, 3), start_h2_scraper($t));

# 1. A reload that removes the memory_status location (the module still
# loaded), then one that adds it back.
$t->write_file_expand('nginx.conf', conf(workers => 2, location => 0));
$t->reload;
sleep 1.5;
is_deeply([signal_exits($t)], [], 'location removed: no worker died');
is(scalar(my @w = running_workers($t->master_pid)), 2, 'location removed: two workers serve');
is($t->get($port, '/hello')->{status}, 200, 'location removed: the server answers');
$t->write_file_expand('nginx.conf', conf(workers => 2, interval => '1s'));
$t->reload;
check_server($t, $port, 'location added back');

# 2. Reloads that fail after parsing, with every setting of ours changed and a
# zone added: nginx keeps the old configuration; a worker killed then is
# respawned from it and must neither crash nor take the failed settings.
my $holder = IO::Socket::INET->new(LocalAddr => '127.0.0.1', LocalPort => 0,
    Listen => 1, ReuseAddr => 0) or die "no port: $!";
my $busy = $holder->sockport;
for my $failing (["listen 127.0.0.1:$busy;", qr/still could not bind/, 'a port in use'],
                 ["ssl_certificate /nonexistent.pem;\n"
                  . "ssl_certificate_key /nonexistent.key;\nlisten 127.0.0.1:" . $t->port(3) . " ssl;",
                  qr/cannot load certificate/, 'a missing certificate'],
                 ["include /nonexistent-memory-status.conf;",
                  qr/open\(\) "\/nonexistent-memory-status\.conf" failed/, 'a bad include']) {
    my ($extra, $logged, $what) = @$failing;
    my @before = running_workers($t->master_pid);
    $t->write_file_expand('nginx.conf', conf(workers => 2, interval => '5s', history => 50,
        zones => NginxTest::zone_line('added', '1m'), extra => $extra));
    my $seen = () = $t->error_log =~ /$logged/g;
    kill 'HUP', $t->master_pid;
    $t->wait_for(sub { (() = $t->error_log =~ /$logged/g) > $seen }, "the failed reload ($what)");
    sleep 0.5;
    is_deeply([running_workers($t->master_pid)], \@before, "failed reload ($what): the workers are kept");
    kill 'KILL', $before[0];
    wait_respawn($t, $before[0]);
    sleep 1.5;
    is_deeply([signal_exits($t)], [], "failed reload ($what), then a respawn: nobody else died");
    my (%interval, %capacity, %old);
    for (1 .. 20) {
        my ($j) = $t->get_json($port, '/ms?history=1');
        my $pid = $j->{nginx}{pid};
        $interval{$pid} = $j->{history} ? $j->{history}{interval_ms} : 'none';
        $capacity{$pid} = $j->{history} ? $j->{history}{capacity} : 'none';
        $old{$pid} = $j->{server}{old_generation_workers};
        last if keys %interval == 2;
    }
    is_deeply([sort values %interval], [1000, 1000],
        "failed reload ($what): both workers, the respawned one too, keep the running interval");
    is_deeply([sort values %capacity], [3600, 3600],
        "failed reload ($what): and the running history's length, not the failed one's 50");
    is_deeply([values %old], [0, 0], "failed reload ($what): no worker counted as an old generation");
    ok(!grep({ $_->{name} eq 'added' } @{ ($t->get_json($port, '/ms'))[0]{zones} }),
        "failed reload ($what): the failed configuration's zone is not listed");
    check_server($t, $port, "failed reload ($what), then a respawn");
}
close $holder;

# Each of our directives changed by a good reload, zones added, resized and
# removed, worker_processes 1 -> 8 -> 2, a worker killed after each.
for my $step ([workers => 1, interval => '2s'], [workers => $QUICK ? 3 : 8, history => 20, zones => NginxTest::zone_line('added', '1m')],
              [workers => 2, zones => NginxTest::zone_line('added', '2m'), format => 'prometheus'],
              [workers => 2, interval => '1s']) {
    my %o = @$step;
    $t->write_file_expand('nginx.conf', conf(%o));
    $t->reload;
    my ($victim) = $t->worker_pids;
    kill 'KILL', $victim;
    wait_respawn($t, $victim);
    check_server($t, $port, "reload to " . join(' ', @$step) . ", a worker killed");
}

# 3. worker_shutdown_timeout while answers wait: many reloads under scraping.
for my $timeout ('1ms', '1s') {
    $t->write_file_expand('nginx.conf', conf(workers => 2, interval => '1s', shutdown => $timeout));
    for (1 .. $RELOADS) {
        kill 'HUP', $t->master_pid;
        sleep 0.3;
    }
    $t->reload;
    sleep 1;
    check_server($t, $port, "$RELOADS reloads 0.3 s apart, worker_shutdown_timeout $timeout");
}

# 4. The status location as a subrequest whose parent ends first.
SKIP: {
    skip $NO_LUA, 33 unless NginxTest::has_lua();
    for my $path ('/parent-errors', '/parent-exits', '/capture-multi-errors') {
        my @before = $t->worker_pids;
        $t->get($port, $path) for 1 .. $REPEATS;
        sleep 0.5;
        is_deeply([$t->worker_pids], \@before, "$path x$REPEATS: the same workers serve");
        check_server($t, $port, "$path x$REPEATS");
    }
}

# Signals: reopen, one worker's TERM.
kill 'USR1', $t->master_pid;
sleep 0.3;
check_server($t, $port, 'reopen (USR1)');
my ($termed) = $t->worker_pids;
kill 'TERM', $termed;
wait_respawn($t, $termed);
check_server($t, $port, 'one worker TERMed and respawned');

stop_scrapers($t, @scrapers);
is_deeply([signal_exits($t)], [], 'the whole run: no worker died on a signal but the test\'s own');
$t->done_file(allow => Lifecycle::provoked());

# 5. master_process off, reloaded twice, each time past the interval; the
# first reload before the first timer tick. nginx itself serves nothing after
# a reload in this mode (its new cycle has no connections: "worker_connections
# are not enough", the same without this module), and exits about 30 s after a
# second one (its old-cycle cleaner walks those missing connections: the same
# without this module); the process must live past our timer's ticks, and log
# nothing of ours.
my $s = NginxTest->new;
my $sport = $s->port(1);
$s->write_file_expand('nginx.conf', conf(workers => 1, interval => '1s', single => 1));
$s->run(single => 1);
my $single = $s->master_pid;
is($s->get($sport, '/ms?detail=full')->{status}, 200, 'master_process off: answers before a reload');
for my $n (1 .. 2) {
    kill 'HUP', $single;
    sleep 2.5;
    ok(kill(0, $single), "master_process off, reload $n: the process lives past two intervals");
    $s->get($sport, '/ms');
}
unlike($s->error_log, qr/memory_status/, 'master_process off: nothing of ours in the log');
$s->done_file(allow => [@{ Lifecycle::provoked() }, qr/worker_connections are not enough/]);

done_testing();
