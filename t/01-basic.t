#!/usr/bin/perl

# The memory_status location: status, headers, methods, and the process
# figures checked against /proc/PID/status read from outside the worker.

use warnings;
use strict;

use FindBin;
use lib "$FindBin::Bin/lib";

use Test::More;
use Time::HiRes ();
use NginxTest qw(proc_status_bytes);
use MemoryStatus qw(is_uint check_base_shape);

my $t = NginxTest->new;
$t->write_standard_conf(server => 'location / { return 200 "plain\n"; }');
$t->run;
my $port = $t->port(1);

my ($worker) = $t->worker_pids;
my $rss_before = proc_status_bytes($worker, 'VmRSS');
my ($j, $res) = $t->get_json($port, '/memory_status');
my $rss_after = proc_status_bytes($worker, 'VmRSS');

is($res->{status}, 200, 'GET: 200');
is($res->{headers}{'content-type'}, 'application/json', 'content type');
is($res->{headers}{'cache-control'}, 'no-store', 'no-store');
is($res->{headers}{'content-length'}, length($res->{content}), 'content length matches body');
check_base_shape($j, 'GET');

is($j->{nginx}{pid}, $worker, 'pid is the worker that served the request');
isnt($j->{nginx}{pid}, $t->master_pid, 'not the master');
is($j->{nginx}{role}, 'worker', 'role worker');
is($j->{nginx}{worker}, 0, 'worker number 0');

# The worker is idle but for this request: its RSS may move by a few pages
# between the three readings, no more.
my ($lo, $hi) = sort { $a <=> $b } $rss_before, $rss_after;
my $slack = 64 * 1024;
cmp_ok($j->{process}{resident_bytes}, '>=', $lo - $slack, 'resident_bytes >= /proc VmRSS before - 64K');
cmp_ok($j->{process}{resident_bytes}, '<=', $hi + $slack, 'resident_bytes <= /proc VmRSS after + 64K');
is($j->{process}{virtual_bytes}, proc_status_bytes($worker, 'VmSize'), 'virtual_bytes = /proc VmSize');
is($j->{process}{threads}, proc_status_bytes($worker, 'Threads'), 'threads = /proc Threads');
is($j->{process}{swap_bytes}, proc_status_bytes($worker, 'VmSwap'), 'swap_bytes = /proc VmSwap');
cmp_ok($j->{process}{peak_resident_bytes}, '>=', $j->{process}{resident_bytes}, 'peak >= resident');
is($j->{process}{resident_anon_bytes} + $j->{process}{resident_file_bytes}
    + $j->{process}{resident_shmem_bytes}, $j->{process}{resident_bytes},
    'anon + file + shmem = resident');

# HEAD: the same headers, no body.
my $head = $t->http('HEAD', $port, '/memory_status');
is($head->{status}, 200, 'HEAD: 200');
my $raw_head = $t->raw_http($port, "HEAD /memory_status HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
like($raw_head, qr/\r\n\r\n\z/, 'HEAD: nothing after the headers');
is($head->{headers}{'content-type'}, 'application/json', 'HEAD: content type');
ok($head->{headers}{'content-length'} > 100, 'HEAD: content length of the JSON');

# Other methods: 405 with Allow.
for my $method (qw(POST PUT DELETE OPTIONS)) {
    my $r = $t->http($method, $port, '/memory_status', content => 'a=1');
    is($r->{status}, 405, "$method: 405");
    is($r->{headers}{allow}, 'GET, HEAD', "$method: Allow: GET, HEAD");
}

# A body on a GET is read and dropped; the answer is still the JSON.
my $with_body = $t->http('GET', $port, '/memory_status', content => 'x' x 10000);
is($with_body->{status}, 200, 'GET with a body: 200');
like($with_body->{content}, qr/"resident_bytes"/, 'GET with a body: JSON');

# Other locations are untouched.
is($t->get($port, '/')->{content}, "plain\n", 'other locations unaffected');

$t->done;
