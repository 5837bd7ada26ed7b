#!/usr/bin/perl

# A panic in the handler never reaches nginx: the request gets 500, error.log an
# [alert] with the panic's message, and the worker goes on serving. Uses the
# test-only build with the `test-panic` feature (scripts/test builds it).

use warnings;
use strict;

use FindBin;
use lib "$FindBin::Bin/lib";

use Test::More;
use Time::HiRes ();
use NginxTest;

my $so = $ENV{TEST_NGINX_PANIC_MODULE}
    // "$NginxTest::ROOT/target/panic-test/debug/libngx_http_memory_status_module.so";
BAIL_OUT("$so missing: build it with cargo build --features test-panic --target-dir target/panic-test")
    unless -f $so;
my $release_so = $NginxTest::MODULE;
local $NginxTest::MODULE = $so;

my $t = NginxTest->new;
$t->write_standard_conf(connections => 64);
$t->run;
my $port = $t->port(1);
my ($worker) = $t->worker_pids;

my $r = $t->http('GET', $port, '/memory_status', headers => { 'X-Memory-Status-Test-Panic' => '1' });
is($r->{status}, 500, 'a panic answers 500');
like($t->error_log, qr/\[alert\] \d+#\d+: \*\d+ memory_status: panic: test-panic: asked by the request/,
    'and logs an [alert] with its message');
my ($j, $ok) = $t->get_json($port, '/memory_status');
is($ok->{status}, 200, 'the next request is answered');
is($j->{nginx}{pid}, $worker, 'by the same worker: it did not die');
unlike($t->error_log, qr/exited on signal/, 'no worker died');

# The same off the event loop: a panic on the measuring thread, and one in the
# completion that answers on the loop.
for my $where ('measuring', 'answering') {
    my $r = $t->http('GET', $port, '/memory_status', headers => { 'X-Memory-Status-Test-Panic' => $where });
    is($r->{status}, 500, "a panic while $where answers 500");
    my ($j, $ok) = $t->get_json($port, '/memory_status');
    is($ok->{status}, 200, "after a panic while $where, the next request is answered");
    is($j->{nginx}{pid}, $worker, "by the same worker, its measuring thread still working");
}
like($t->error_log, qr/\[alert\].*memory_status: panic while measuring/, 'the thread\'s panic is logged');
like($t->error_log, qr/\[alert\].*memory_status: panic: test-panic: while answering on the loop/, 'the completion\'s too');
unlike($t->error_log, qr/exited on signal/, 'no worker died');

# A measuring that stalls (4 s here) is not waited for past the bound (2 s in
# this build, 10 s in the release): 503, and the worker goes on.
{
    my $start = Time::HiRes::time();
    my $r = $t->http('GET', $port, '/memory_status', headers => { 'X-Memory-Status-Test-Panic' => 'stall' });
    my $took = Time::HiRes::time() - $start;
    is($r->{status}, 503, 'a stalled measuring answers 503');
    cmp_ok($took, '<', 3.9, sprintf('before the measuring ends (%.1f s)', $took));
    like($t->error_log, qr/\[alert\].*memory_status: measuring took over 2 s, answered 503/, 'and says so');
    # The thread is free once the stall (4 s) is over.
    Time::HiRes::sleep(4.5 - (Time::HiRes::time() - $start));
    my ($j, $ok) = $t->get_json($port, '/memory_status');
    is($ok->{status}, 200, 'the next request is answered once the thread is free');
}

# A request waiting behind a stalled measuring gets its 503 at its own
# deadline, not at the next tick of a 1 s timer after it.
{
    my $stalled = NginxTest::send_request($port, '/memory_status', 'X-Memory-Status-Test-Panic' => 'stall');
    Time::HiRes::sleep(0.5);
    my $sent = Time::HiRes::time();
    my $queued = NginxTest::send_request($port, '/memory_status');
    is(NginxTest::read_reply($queued), 503, 'a request queued behind the stalled measuring answers 503');
    my $took = Time::HiRes::time() - $sent;
    cmp_ok($took, '<', 2.4, sprintf('at its own deadline: %.2f s after it arrived (the bound is 2 s)', $took));
    cmp_ok($took, '>=', 1.9, 'not before it');
    is(NginxTest::read_reply($stalled), 503, 'the stalled one too');
    Time::HiRes::sleep(4.5);
}

$t->done_file(allow => [qr/memory_status: panic: test-panic/, qr/memory_status: panic while measuring/,
    qr/memory_status: measuring took over 2 s/]);
# No connection slot left for the wake-up channel (the listener, the master's
# channel and the client take all three): every answer is measured on the loop, error.log says why, and no
# slot or descriptor leaks from the retries.
{
    local $NginxTest::MODULE = $release_so;
    my $s = NginxTest->new;
    $s->write_standard_conf(connections => 3);
    $s->run;
    my ($w) = $s->worker_pids;
    my $fds = sub { scalar(() = glob "/proc/$w/fd/*") };
    my ($j0, $r0) = $s->get_json($s->port(1), '/memory_status');
    # The first client's socket may still be open in the worker for a moment.
    Time::HiRes::sleep(0.2);
    my $before = $fds->();
    my $ok = 0;
    for (1 .. 20) {
        my ($j, $r) = $s->get_json($s->port(1), '/memory_status');
        $ok++ if $r->{status} == 200;
    }
    is($ok, 20, 'no slot for the channel: answered on the loop, 20 of 20');
    # A leak would add one a retry; the last client's socket may still be
    # closing (one fewer is no leak).
    cmp_ok($fds->(), '<=', $before, 'no descriptor left behind by the retries');
    like($s->error_log, qr/\[alert\].*memory_status: measuring on the event loop: no free connection/,
        'error.log says why');
    $s->done_file(allow => [qr/measuring on the event loop: no free connection/,
        qr/3 worker_connections are not enough/]);
}

done_testing();
