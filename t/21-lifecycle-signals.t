#!/usr/bin/perl

# The lifecycle suite, part two: binary upgrades, shutdowns with answers
# waiting (a measuring stalled by the test-only build), nginx's own
# subrequests to the status location (mirror, SSI, auth_request), daemon off
# and worker_processes auto. After each event: no worker died on a signal but
# the test's own, every format answers 200, the processes and figures add up.

use warnings;
use strict;

use FindBin;
use lib "$FindBin::Bin/lib";

use IO::Socket::INET;
use POSIX qw(WNOHANG);
use Test::More;
use Time::HiRes qw(time sleep);
use NginxTest;
use Lifecycle qw(conf start_scrapers stop_scrapers signal_exits check_server wait_respawn
    running_workers);

my $so = $ENV{TEST_NGINX_PANIC_MODULE}
    // "$NginxTest::ROOT/target/panic-test/debug/libngx_http_memory_status_module.so";
BAIL_OUT("$so missing: scripts/test builds it") unless -f $so;

my $STALL = { 'X-Memory-Status-Test-Panic' => 'stall' };

# --- binary upgrade ---------------------------------------------------------------

{
    my $t = NginxTest->new;
    my $port = $t->port(1);
    $t->write_file_expand('nginx.conf', conf(workers => 2, interval => '1s'));
    $t->run;
    my @scrapers = start_scrapers($t, $port, 2);
    my $old = $t->master_pid;
    my $oldbin = $t->prefix . '/nginx.pid.oldbin';

    kill 'USR2', $old;
    $t->wait_for(sub { -f $oldbin && $t->master_pid && $t->master_pid != $old && (my @w = $t->worker_pids) >= 2 },
        'the new master and its workers');
    my $new = $t->master_pid;
    check_server($t, $port, 'USR2: the new binary runs beside the old');
    kill 'WINCH', $old;
    $t->wait_for(sub { !running_workers($old) }, "the old master's workers gone after WINCH");
    check_server($t, $port, 'WINCH: the old workers gone');
    kill 'QUIT', $old;
    $t->wait_for(sub { !kill 0, $old }, 'the old master gone after QUIT');
    check_server($t, $port, 'QUIT of the old master: the new one serves alone');

    # USR2 again, then the new master TERMed: the old one serves on.
    kill 'USR2', $new;
    $t->wait_for(sub { -f $oldbin && $t->master_pid && $t->master_pid != $new }, 'a second new master');
    my $newer = $t->master_pid;
    $t->wait_for(sub { (my @w = $t->worker_pids) >= 2 }, 'its workers');
    kill 'TERM', $newer;
    $t->wait_for(sub { !kill 0, $newer }, 'the newer master gone after TERM');
    $t->wait_for(sub { -f $t->prefix . '/nginx.pid' && $t->master_pid == $new }, 'the pid file back to the running master');
    check_server($t, $port, 'USR2 then TERM of the new master: the running one serves on');

    stop_scrapers($t, @scrapers);
    $t->done_file(allow => Lifecycle::provoked());
}

# --- shutdowns with answers waiting --------------------------------------------

{
    local $NginxTest::MODULE = $so;
    my $t = NginxTest->new;
    my $port = $t->port(1);
    $t->write_file_expand('nginx.conf', conf(workers => 1, interval => '1s', shutdown => '1s'));
    $t->run;

    # A reload while a measuring stalls: the shutdown timer frees the request
    # at 1 s, the measuring ends later and finds nothing to answer.
    my $s = NginxTest::send_request($port, '/ms', %$STALL);
    sleep 0.3;
    my ($old) = $t->worker_pids;
    my $t0 = time;
    $t->reload;
    my $took = time - $t0;
    my $status = NginxTest::read_reply($s);
    # The freed request keeps nothing: the old worker exits at the timeout, not
    # when the 4 s measuring or the 2 s bound of the test build ends.
    cmp_ok($took, '<', 1.9, sprintf('the old worker exits at the shutdown timeout (%.1f s)', $took));
    is($status, 'closed', 'a stalled answer across a reload: worker_shutdown_timeout closed it');
    $t->wait_for(sub { !kill 0, $old }, 'the old worker gone');
    is_deeply([signal_exits($t)], [], 'the stalled answer, its request freed by the shutdown timer: no crash');
    check_server($t, $port, 'after worker_shutdown_timeout freed a waiting request');

    # -s quit mid-answer, without worker_shutdown_timeout: the worker answers
    # its waiting request, then exits.
    $t->write_file_expand('nginx.conf', conf(workers => 1, interval => '1s'));
    $t->reload;
    $s = NginxTest::send_request($port, '/ms', %$STALL);
    sleep 0.3;
    my @quit_cmd = $t->nginx_cmd('-s', 'quit');
    system(@quit_cmd) == 0 or die "nginx -s quit failed";
    is(NginxTest::read_reply($s), 503, 'nginx -s quit mid-answer: the stalled request is still answered (503 at the bound)');
    $t->wait_for(sub { !$t->master_pid }, 'nginx gone after -s quit');
    is_deeply([signal_exits($t)], [], 'nginx -s quit mid-answer: no crash');
    $t->{running} = 0;

    # -s stop mid-answer: the worker exits at once, the thread with it.
    $t->run;
    $s = NginxTest::send_request($port, '/ms', %$STALL);
    sleep 0.3;
    my @stop_cmd = $t->nginx_cmd('-s', 'stop');
    system(@stop_cmd) == 0 or die "nginx -s stop failed";
    my $st = NginxTest::read_reply($s);
    ok($st eq 'closed' || $st =~ /^\d+$/, "nginx -s stop mid-answer: the connection ends ($st)");
    $t->wait_for(sub { !$t->master_pid }, 'nginx gone after -s stop');
    is_deeply([signal_exits($t)], [], 'nginx -s stop mid-answer: no crash');
    $t->{running} = 0;
    $t->done_file(allow => [@{ Lifecycle::provoked() }, qr/measuring took over/]);
}

# --- nginx's own subrequests, daemon off, worker_processes auto ------------------

{
    my $v = qx{$NginxTest::NGINX -V 2>&1};
    my $auth = $v =~ /--with-http_auth_request_module/;
    my $t = NginxTest->new;
    my $port = $t->port(1);
    my $extra = join "\n",
        'location = /mirrored { mirror /internal-ms; mirror /internal-ms; return 204; }',
        'location = /ssi { ssi on; default_type text/html; return 200 \'<!--# include virtual="/internal-ms" --><!--# include virtual="/internal-ms?format=prometheus" -->\'; }',
        ($auth ? 'location = /guarded { auth_request /internal-ms; return 200 "in\n"; }' : '');
    my $c = conf(workers => 'auto', interval => '1s', extra => $extra);
    $t->write_file_expand('nginx.conf', $c);
    # daemon off: nginx in the foreground, a child of the test.
    my $pid = fork // die;
    if (!$pid) {
        open STDOUT, '>', '/dev/null';
        exec $NginxTest::NGINX, '-p', $t->prefix . '/', '-c', $t->prefix . '/nginx.conf', '-g', 'daemon off;';
        die "exec: $!";
    }
    $t->{running} = 1;
    $t->wait_for(sub { $t->master_pid && (my @w = $t->worker_pids) >= 1 }, 'nginx in the foreground');
    $t->wait_for_ports;
    is($t->master_pid, $pid, 'daemon off: the master is the test\'s child');
    my @scrapers = start_scrapers($t, $port, 2);
    my @paths = ('/mirrored', '/ssi', ($auth ? '/guarded' : ()));
    for my $path (@paths) {
        my @before = $t->worker_pids;
        my %st;
        $st{ $t->get($port, $path)->{status} }++ for 1 .. 30;
        ok(!grep({ $_ >= 500 } keys %st), "$path x30: no 5xx (" . join(',', map { "$_ x$st{$_}" } sort keys %st) . ")");
        is_deeply([$t->worker_pids], \@before, "$path x30: the same workers serve");
    }
    like($t->get($port, '/ssi')->{content}, qr/"schema":1.*nginx_memory_info/s, 'SSI: both answers included');
    SKIP: {
        skip 'this nginx has no auth_request module', 1 unless $auth;
        is($t->get($port, '/guarded')->{status}, 200, 'auth_request to the status location lets the request in');
    }
    check_server($t, $port, 'daemon off, worker_processes auto, after the subrequests');
    $t->reload;
    check_server($t, $port, 'daemon off: after a reload');
    stop_scrapers($t, @scrapers);
    $t->stop;
    waitpid $pid, 0;
    $t->done_file(allow => Lifecycle::provoked());
}

done_testing();
