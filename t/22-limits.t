#!/usr/bin/perl

# At the edges (issue 21): a worker that cannot have its measuring thread
# answers on the loop, says so in each answer's errors, logs it once, and
# retries with a backoff.

use warnings;
use strict;

use FindBin;
use lib "$FindBin::Bin/lib";

use IO::Socket::INET;
use JSON::PP ();
use Test::More;
use Time::HiRes qw(sleep);
use NginxTest;

plan skip_all => 'needs root (workers as nobody, prlimit on the master)' if $>;
plan skip_all => 'prlimit is missing' if system('command -v prlimit >/dev/null');

my $t = NginxTest->new;
$t->write_standard_conf(main => 'user nobody nogroup;', connections => 64, status => '/ms');
$t->run;
my $port = $t->port(1);

# One process for nobody, the worker itself: its thread cannot be created.
# Root's master is not held to the limit; the workers it forks next inherit it.
# Only the soft limit: raising it back needs no privilege.
my ($hard) = qx{prlimit --pid @{[ $t->master_pid ]} --nproc --noheadings --raw -o HARD} =~ /(\S+)/;
system('prlimit', '--pid', $t->master_pid, '--nproc=1:') == 0 or die "prlimit failed";
$t->reload;

my ($answers, $with_error) = (0, 0);
for (1 .. 300) {
    my ($j, $r) = $t->get_json($port, '/ms');
    $answers++ if $r->{status} == 200;
    $with_error++ if grep { $_->{source} eq 'measuring' && $_->{error} =~ /measuring on the event loop: thread/ }
        @{ $j->{errors} };
}
is($answers, 300, 'no thread: every answer is a 200 (measured on the loop)');
is($with_error, 300, 'no thread: each answer says so in its errors');
my @alerts = $t->error_log =~ /(\[alert\].*measuring on the event loop)/g;
is(scalar @alerts, 1, '300 answers without a thread: one [alert], not one each');

# The retry after the backoff fails again: still no second alert within a minute.
sleep 1.2;
$t->get_json($port, '/ms');
@alerts = $t->error_log =~ /(\[alert\].*measuring on the event loop)/g;
is(scalar @alerts, 1, 'a retry after the backoff that fails again logs nothing more within a minute');

# The limit lifted, a new worker has its thread again.
system('prlimit', '--pid', $t->master_pid, "--nproc=$hard:") == 0 or die "prlimit failed";
$t->reload;
my ($j) = $t->get_json($port, '/ms');
ok(!grep({ $_->{source} eq 'measuring' } @{ $j->{errors} }), 'the limit lifted: measured off the loop again');

$t->done_file(allow => [qr/measuring on the event loop: thread/]);

# More workers than history rings: generations held alive by requests in
# flight take all 32 rings (2 workers: room for 4 generations and slack);
# the current workers have none and the answer names them; once the old ones
# exit, the current ones claim rings on their timer.
SKIP: {
    skip "Debian's Lua module is not installed", 5 unless NginxTest::has_lua();
    my $h = NginxTest->new;
    $h->write_standard_conf(
        lua => 1,
        workers => 2,
        connections => 512,
        http => ['memory_status_interval 1s;', 'lua_check_client_abort on;'],
        status => '/ms',
        server => 'location = /hold { content_by_lua_block { ngx.sleep(120) } }',
    );
    $h->run;
    my $hport = $h->port(1);
    my @held;
    # Generations held by requests in flight until 34 workers live, for 32
    # rings (a generation whose workers got no held request exits at once).
    for my $gen (1 .. 40) {
        for (1 .. 8) {
            my $s = IO::Socket::INET->new(PeerAddr => "127.0.0.1:$hport") or die "connect: $!";
            print $s "GET /hold HTTP/1.0\r\n\r\n";
            push @held, $s;
        }
        sleep 0.2;
        last if (my @w = $h->worker_pids) >= 34;
        my %before = map { $_ => 1 } $h->worker_pids;
        kill 'HUP', $h->master_pid;
        $h->wait_for(sub { (grep { !$before{$_} } $h->worker_pids) >= 2 }, 'generation ' . ($gen + 1));
    }
    cmp_ok(scalar(my @all = $h->worker_pids), '>=', 34, 'held requests keep 34 workers or more alive');
    sleep 1.5;
    my %named;
    for (1 .. 20) {
        my ($j) = $h->get_json($hport, '/ms?history=1');
        $named{$_} = 1 for map { $_->{error} =~ /^process (\d+) has no history ring/ ? $1 : () }
            grep { $_->{source} eq 'history' } @{ $j->{errors} };
    }
    my @workers = $h->worker_pids;
    cmp_ok(scalar keys %named, '>=', 1,
        'more workers than rings: the answer names the processes without one (' . join(',', sort keys %named) . ')');
    ok(!grep({ my $p = $_; !grep { $_ == $p } @workers } keys %named), 'each one named is a live worker');
    # The old generations let go.
    close $_ for @held;
    @held = ();
    $h->wait_for(sub { (my @w = $h->worker_pids) == 2 }, 'the old generations gone');
    sleep 2.5;
    my $left = 0;
    for (1 .. 10) {
        my ($k) = $h->get_json($hport, '/ms?history=1');
        $left += grep { $_->{source} eq 'history' } @{ $k->{errors} };
    }
    is($left, 0, 'the old generations gone: the current workers claimed rings on their timer');
    my ($k) = $h->get_json($hport, '/ms?history=1');
    is(scalar @{ $k->{history}{processes} // [] }, 2, '?history=1: both current workers have samples');
    $h->done_file;
}
# An allocation failure ends an answer, never the worker: the worker's
# address space limited a little above what it maps, at several heights, so
# that allocations fail on the loop, on the measuring thread and while
# rendering. Before: "memory allocation of 1048576 bytes failed", signal 6, a
# worker respawned (and killed again) every answer.
{
    my $a = NginxTest->new;
    $a->write_standard_conf(
        connections => 64,
        http => ['memory_status_interval 1s;', 'limit_req_zone $binary_remote_addr zone=perip:1m rate=10r/s;'],
        status => '/ms',
        server => 'location = /ok { return 200 "ok\n"; }',
    );
    $a->run;
    my $aport = $a->port(1);
    my $master = $a->master_pid;
    my ($hard_as) = qx{prlimit --pid $master --as --noheadings --raw -o HARD} =~ /(\S+)/;
    my $vm_kib = sub { (NginxTest::read_file_text("/proc/$_[0]/status") // '') =~ /VmSize:\s+(\d+)/ ? $1 : 0 };
    # A new worker under the master's limit: the old one exits gracefully
    # and the master forks the next.
    my $respawn = sub {
        my ($old) = $a->worker_pids;
        kill 'QUIT', $old;
        $a->wait_for(sub { my @w = $a->worker_pids; @w == 1 && $w[0] != $old }, 'a respawned worker');
        sleep 0.3;
    };
    my %status;
    my ($bad_reason, $bad_json) = (0, 0);
    for my $above_mib (1, 2, 3, 4, 5, 6, 8, 10, 14) {
        my $limit = ($vm_kib->($master) << 10) + ($above_mib << 20);
        system('prlimit', '--pid', $master, "--as=$limit:") == 0 or die "prlimit failed";
        $respawn->();
        for my $i (1 .. 12) {
            for my $path ('/ms', '/ms?format=prometheus', '/ms?format=html', '/ms?history=1',
                          '/ms?detail=full', '/ms?zone=perip') {
                my $r = $a->get($aport, $path);
                $status{$r->{status}}++;
                if ($r->{status} == 503) {
                    $bad_reason++ unless $r->{content} eq "memory_status: out of memory while answering; the worker goes on\n";
                } elsif ($r->{status} == 200 && $path !~ /format/) {
                    $bad_json++ unless eval { JSON::PP::decode_json($r->{content}); 1 };
                }
            }
        }
    }
    my @statuses = sort keys %status;
    # nginx's own allocations share the address space: where one of them
    # failed (nginx logs it), that request may fail as nginx makes it fail.
    my $nginx_failed = $a->error_log =~ /\[emerg\].*(malloc|posix_memalign)\(.*\) failed/;
    my @other = grep { $_ != 200 && $_ != 503 } @statuses;
    ok(!@other || $nginx_failed,
        'under address-space limits: every answer a 200 or a 503, or nginx\'s own allocation failed ('
        . join(', ', map { "$_: $status{$_}" } @statuses) . ')');
    ok($status{503}, 'the tightest limits: some answers given up (503)');
    ok($status{200}, 'the wider limits: answers whole (200)');
    is($bad_reason, 0, 'each 503 says why in one line');
    is($bad_json, 0, 'each 200 is whole JSON');
    my $log = $a->error_log;
    is(scalar(() = $log =~ /exited on signal/g), 0, 'no worker died (no abort on a failed allocation)');
    like($log, qr/\[alert\].*memory_status: out of memory while measuring/, 'the failure is logged');
    # The limit lifted: a worker answers whole again, and says nothing of memory.
    system('prlimit', '--pid', $master, "--as=$hard_as:") == 0 or die "prlimit failed";
    $respawn->();
    my ($j, $r) = $a->get_json($aport, '/ms?detail=full');
    is($r->{status}, 200, 'the limit lifted: 200');
    ok(defined $j->{process}{resident_bytes} && defined $j->{breakdown}, 'the limit lifted: a whole answer');
    is($a->get($aport, '/ok')->{content}, "ok\n", 'the worker served plain requests throughout');
    $a->done_file(allow => [qr/memory_status: out of memory while measuring/,
                            qr/measuring on the event loop: thread/,
                            qr/\[emerg\].*(malloc|posix_memalign)\(.*\) failed/]);
}

# The registry's edges, written into the zone by the test-only build: a
# worker killed in the middle of publishing (its sequence left odd), slots and
# rings whose writers died between the claim and the pid's store, a registry
# and rings with nothing left (claimed by the live master); then a master
# killed, its workers orphaned.
SKIP: {
    my $so = $ENV{TEST_NGINX_PANIC_MODULE}
        // "$NginxTest::ROOT/target/panic-test/debug/libngx_http_memory_status_module.so";
    skip "the test-only build is missing ($so)", 11 unless -f $so;
    local $NginxTest::MODULE = $so;
    my $g = NginxTest->new;
    $g->write_standard_conf(
        workers => 2,
        connections => 64,
        http => 'memory_status_interval 1s;',
        # reuseport: the kernel spreads connections over both workers.
        listen => '%%PORT_1%% reuseport',
        status => '/ms',
    );
    $g->run;
    my $gport = $g->port(1);
    # An answer from a given worker.
    my $from = sub {
        my ($pid, $path) = @_;
        for (1 .. 200) {
            my ($j) = $g->get_json($gport, $path // '/ms');
            return $j if $j->{nginx}{pid} == $pid;
        }
        die "no answer from worker $pid\n";
    };
    # A worker dies leaving the registry in a state; returns the worker
    # respawned for it and the one that lived on.
    my $die = sub {
        my ($what) = @_;
        my %before = map { $_ => 1 } $g->worker_pids;
        # One try (HTTP::Tiny would retry on the dropped connection).
        $g->raw_http($gport, "GET /ms HTTP/1.0\r\nHost: x\r\nX-Memory-Status-Test-Panic: die-$what\r\n\r\n");
        $g->wait_for(sub {
            my @now = $g->worker_pids;
            @now == 2 && (grep { !$before{$_} } @now) == 1
        }, "a worker respawned after die-$what");
        my ($new) = grep { !$before{$_} } $g->worker_pids;
        my ($other) = grep { $before{$_} } $g->worker_pids;
        sleep 1.5;
        return ($new, $other);
    };
    my $entry = sub { my ($j, $pid) = @_; (grep { $_->{pid} == $pid } @{ $j->{processes} })[0] };
    my $says = sub { my ($j, $re) = @_; scalar grep { $_->{source} =~ /^(processes|history)$/ && $_->{error} =~ $re } @{ $j->{errors} } };

    my ($new, $other) = $die->('odd-seq');
    my $e = $entry->($from->($other), $new);
    ok($e && defined $e->{memory}, "a slot left mid-publish: its next owner $new is published whole in the other worker's answer");

    ($new, $other) = $die->('stuck');
    $e = $entry->($from->($other), $new);
    ok($e && defined $e->{memory}, "slots whose writers died before their pid: the next worker $new takes one and is listed");
    my $j = $from->($new, '/ms?history=1');
    ok(!$says->($j, qr/no registry slot|no history ring|registry is full/), 'and a ring: its own answer says nothing is missing')
        or diag explain $j->{errors};
    ok((grep { $_->{pid} == $new } @{ $j->{history}{processes} // [] }), 'its history has its samples');

    ($new, $other) = $die->('full');
    $j = $from->($new, '/ms?history=1');
    ok($says->($j, qr/^this process has no registry slot \(all 1024 are taken\)/), "no slot left: worker $new says it has none")
        or diag explain $j->{errors};
    ok($says->($j, qr/^process $new has no history ring/), 'and that it has no ring');
    ok($entry->($j, $new), 'its own answer still lists (and counts) it');
    ok($says->($from->($other), qr/^the registry is full \(1024 slots\)/), 'the other worker says the registry is full');
    $g->done_file(allow => [qr/worker process \d+ exited on signal 9/]);

    # A master killed: its workers go on, adopted by another process.
    my $o = NginxTest->new;
    $o->write_standard_conf(connections => 64, status => '/ms');
    $o->run;
    my $oport = $o->port(1);
    my $master = $o->master_pid;
    my ($orphan) = $o->worker_pids;
    kill 'KILL', $master;
    $o->wait_for(sub { NginxTest::parent_of($orphan) != $master }, 'the worker adopted');
    my ($k) = $o->get_json($oport, '/ms');
    ok($says->($k, qr/^the master \(pid $master\) is gone: this worker's parent is now pid \d+/), 'orphaned: the answer says the master is gone')
        or diag explain $k->{errors};
    ok(!grep({ $_->{role} eq 'master' } @{ $k->{processes} }), 'and lists no master (the adopting process is not nginx)');
    is($k->{nginx}{pid}, $orphan, 'the orphaned worker answers');
    kill 'KILL', $orphan;
    $o->{running} = 0;
}

done_testing();
