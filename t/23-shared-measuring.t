#!/usr/bin/perl

# Requests share measurings: those that arrive while one runs wait for the
# next, which begins after all of them arrived and serves every one asking the
# same measuring, rendered once per format. Uses the test-only build: its
# `slow` hook makes one measuring last 600 ms, so the others surely arrive
# while it runs.

use warnings;
use strict;

use FindBin;
use lib "$FindBin::Bin/lib";

use Test::More;
use Time::HiRes ();
use JSON::PP;
use NginxTest;
use MemoryStatus qw(unexpected_errors);

my $so = $ENV{TEST_NGINX_PANIC_MODULE}
    // "$NginxTest::ROOT/target/panic-test/debug/libngx_http_memory_status_module.so";
BAIL_OUT("$so missing: build it with cargo build --features test-panic --target-dir target/panic-test")
    unless -f $so;
local $NginxTest::MODULE = $so;

my $t = NginxTest->new;
$t->write_standard_conf;
$t->run;
my $port = $t->port(1);
my ($worker) = $t->worker_pids;

for my $round (1 .. 3) {
    my $slow = NginxTest::send_request($port, '/memory_status', 'X-Memory-Status-Test-Panic' => 'slow');
    Time::HiRes::sleep(0.15);
    my $sent_ms = int(Time::HiRes::time() * 1000);
    my %asked = (
        json => [map { NginxTest::send_request($port, '/memory_status') } 1 .. 5],
        prometheus => [map { NginxTest::send_request($port, '/memory_status?format=prometheus') } 1 .. 2],
        full => [map { NginxTest::send_request($port, '/memory_status?detail=full') } 1 .. 2],
    );
    # A client that goes away while it waits.
    close NginxTest::send_request($port, '/memory_status');

    my ($slow_status, $slow_body) = NginxTest::read_reply($slow);
    is($slow_status, 200, "round $round: the slow measuring answers");
    my $slow_at = decode_json($slow_body)->{collected_at_ms};
    my %got;
    for my $kind (sort keys %asked) {
        for my $s (@{ $asked{$kind} }) {
            my ($status, $body) = NginxTest::read_reply($s);
            is($status, 200, "round $round: $kind answered");
            push @{ $got{$kind} }, $body;
        }
    }
    for my $kind (sort keys %got) {
        my %distinct = map { $_ => 1 } @{ $got{$kind} };
        is(scalar keys %distinct, 1, "round $round: the $kind answers are one rendering of one measuring");
    }
    my %at = map { $_ => decode_json($got{$_}[0])->{collected_at_ms} } qw(json full);
    cmp_ok($at{json}, '>=', $sent_ms, "round $round: measured after the requests arrived, never before");
    cmp_ok($at{full}, '>=', $sent_ms, "round $round: detail=full too");
    cmp_ok($at{json}, '>', $slow_at, "round $round: by the next measuring, not the running one");
    isnt($at{json}, $at{full}, "round $round: another measuring for another depth");
}
my ($j) = $t->get_json($port, '/memory_status');
is($j->{nginx}{pid}, $worker, 'the same worker answers afterwards');
is_deeply([ unexpected_errors($j) ], [], 'with no unexpected error');
$t->done_file;
done_testing;
