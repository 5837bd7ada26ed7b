#!/usr/bin/perl

# nginx's pools: requests in flight over HTTP/1 and HTTP/2, a request whose
# pool grows with its body, keep-alive connections, and the cycle pool.

use warnings;
use strict;

use FindBin;
use lib "$FindBin::Bin/lib";

use IO::Socket::INET;
use Test::More;
use Time::HiRes qw(sleep);
use NginxTest;

# Without Debian's Lua module: the cycle pool, the asking request and idle
# keep-alive connections, not the slow requests Lua holds open.
my $LUA = NginxTest::has_lua();
my $NO_LUA = "Debian's Lua module is not installed";

my $KiB = 1024;

my $t = NginxTest->new;
$t->write_standard_conf(
    lua => $LUA,
    connections => 256,
    http => <<'EOF',
        keepalive_timeout 60s;
        client_body_buffer_size 1m;
        client_max_body_size 2m;
EOF
    listen => ['%%PORT_1%%', '%%PORT_2%% http2'],
    server => 'location = /small { return 200 "ok\n"; }',
    lua_server => <<'EOF',
        location = /slow { content_by_lua_block { ngx.sleep(tonumber(ngx.var.arg_s) or 4); ngx.say("done") } }
        location = /body {
            content_by_lua_block {
                ngx.req.read_body()
                local body = ngx.req.get_body_data()
                ngx.sleep(4)
                ngx.say(#(body or ""))
            }
        }
EOF
);
$t->run;
my $port = $t->port(1);

sub status { my ($j) = $t->get_json($port, '/memory_status'); $j }
sub connect_raw {
    IO::Socket::INET->new(PeerAddr => "127.0.0.1:$port", Timeout => 5) or die "connect: $!";
}
sub kind { my ($group, $kind) = @_; $group->{by_kind}{$kind} // { count => 0, bytes => 0 } }

# --- the cycle pool ----------------------------------------------------------------

my $idle = status();
my $cycle = $idle->{pools}{cycle};
cmp_ok($cycle->{bytes}, '>', 0, 'cycle pool present and non-zero');
cmp_ok($cycle->{blocks}, '>=', 1, 'cycle pool has blocks');
is($cycle->{bytes}, $cycle->{block_bytes} + $cycle->{large_bytes}, 'cycle bytes = blocks + large');
is(kind($idle->{pools}{requests}, 'http1')->{count}, 1, 'idle: the asking request alone is in flight');
is($idle->{pools}{requests}{largest}[0]{kind}, 'http1', 'idle: the largest is the asking one');

SKIP: {
    skip $NO_LUA, 8 unless $LUA;

    # --- N slow requests in flight --------------------------------------------------------

    my $n = 5;
    my @slow = map {
        my $s = connect_raw();
        print $s "GET /slow?s=4 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
        $s;
    } 1 .. $n;
    sleep 0.5;
    my $busy = status();
    is(kind($busy->{pools}{requests}, 'http1')->{count}, $n + 1, "$n slow requests and the asking one in flight");
    is(kind($busy->{pools}{connections}, 'http')->{count}, $n + 1, 'as many http connections');
    is($busy->{pools}{requests}{count}, $n + 1, 'requests count');
    my @ages = map { $_->{age_ms} } @{ $busy->{pools}{requests}{largest} };
    ok((grep { $_ >= 300 } @ages) >= 1, "slow requests have an age (@ages ms)");
    cmp_ok(kind($busy->{pools}{requests}, 'http1')->{bytes}, '>=', ($n + 1) * 1024, 'each request has a pool');
    close $_ for @slow;

    # --- a request whose pool grows with its body --------------------------------------

    my $body_len = 512 * $KiB;
    my $b = connect_raw();
    print $b "POST /body HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: $body_len\r\n\r\n" . ('b' x $body_len);
    sleep 0.5;
    my $with_body = status();
    my $largest = $with_body->{pools}{requests}{largest}[0];
    cmp_ok($largest->{bytes}, '>=', $body_len, "the largest request holds the $body_len-byte body ($largest->{bytes})");
    cmp_ok($with_body->{pools}{requests}{largest_bytes}, '>=', $body_len, 'requests.largest_bytes shows it');
    cmp_ok(kind($with_body->{pools}{requests}, 'http1')->{bytes} - kind($idle->{pools}{requests}, 'http1')->{bytes},
        '>=', $body_len, 'request pool bytes grew by the body');
    close $b;
}

# --- keep-alive connections are connections, not requests -----------------------------

my $k = 4;
my @keepalive;
for (1 .. $k) {
    my $s = connect_raw();
    print $s "GET /small HTTP/1.1\r\nHost: x\r\n\r\n";
    my $reply = '';
    while ($reply !~ /\r\n\r\nok\n/) {
        my $got = sysread($s, $reply, 4096, length $reply) or last;
    }
    like($reply, qr/^HTTP\/1.1 200/, "keep-alive connection $_ got its answer");
    push @keepalive, $s;
}
sleep 3.8 if $LUA;    # the slow requests and the body request are over by now
my $ka = status();
is(kind($ka->{pools}{connections}, 'http')->{count}, $k + 1, "$k idle keep-alive connections and the asking one");
is(kind($ka->{pools}{requests}, 'http1')->{count}, 1, 'no request but the asking one');
close $_ for @keepalive;

# --- HTTP/2 streams ---------------------------------------------------------------------

SKIP: {
    my $curl = '/usr/bin/curl';
    skip $NO_LUA, 4 unless $LUA;
    skip 'curl not installed', 4 unless -x $curl;
    my $h2 = $t->port(2);
    my $streams = 3;
    my $pid = fork // die "fork: $!";
    if (!$pid) {
        open STDOUT, '>', '/dev/null';
        open STDERR, '>', '/dev/null';
        exec $curl, '-s', '--http2-prior-knowledge', '--parallel', '--parallel-immediate',
            map { "http://127.0.0.1:$h2/slow?s=3&i=$_" } 1 .. $streams;
        exit 127;
    }
    sleep 1;
    my $j = status();
    is(kind($j->{pools}{requests}, 'http2')->{count}, $streams, "$streams HTTP/2 streams in flight");
    cmp_ok(kind($j->{pools}{requests}, 'http2')->{bytes}, '>', 0, 'their pools counted');
    cmp_ok(kind($j->{pools}{connections}, 'http')->{count}, '>=', 2, 'the HTTP/2 connection counted as a connection');
    ok(!grep({ $_->{source} =~ /http2/ } @{ $j->{errors} }), 'the HTTP/2 walk is available');
    waitpid $pid, 0;
}

$t->done_file;

# --- the cycle pool grows with the configuration ---------------------------------------

my %cycle;
for my $servers (1, 60) {
    my $t = NginxTest->new;
    my $blocks = join "\n", map { "    server { listen 127.0.0.1:%%PORT_1%%; server_name s$_.example; location /a$_ { return 200; } location /b$_ { return 204; } }" } 1 .. $servers;
    $t->write_standard_conf(
        connections => 64,
        http => ['server_names_hash_bucket_size 64;', $blocks],
        listen => '%%PORT_1%% default_server',
    );
    $t->run;
    my ($j) = $t->get_json($t->port(1), '/memory_status');
    $cycle{$servers} = $j->{pools}{cycle}{bytes};
    $t->done_file;
}
cmp_ok($cycle{60}, '>', $cycle{1}, "the cycle pool grows with server blocks ($cycle{1} -> $cycle{60})");

done_testing();
