#!/usr/bin/perl

# Shared memory zones: every zone with its configured size and owner (http and
# stream), slab slots moving as Lua fills a dict, fails, fragmentation, loaded
# pages against /proc/PID/smaps, ?zone=, and a zone lock left by a killed worker.

use warnings;
use strict;

use FindBin;
use lib "$FindBin::Bin/lib";

use Test::More;
use NginxTest qw(read_file_text smaps_rss_of_size);
use MemoryStatus qw(is_uint);

# Without Debian's Lua module: the other zones, without the dicts and what Lua does to them.
my $LUA = NginxTest::has_lua();
my $NO_LUA = "Debian's Lua module is not installed";

my $t = NginxTest->new;
$t->write_standard_conf(
    lua => $LUA,
    lua_http => <<'EOF',
        lua_shared_dict small 100k;
        lua_shared_dict frag 1m;
        lua_shared_dict big 10300k;
EOF
    http => <<'EOF',
        limit_req_zone $binary_remote_addr zone=req_zone:1m rate=1r/s;
        limit_conn_zone $binary_remote_addr zone=conn_zone:512k;
        proxy_cache_path %%PREFIX%%/cache keys_zone=cache_zone:2m;
        ssl_session_cache shared:ssl_zone:1m;
        upstream backend { zone upstream_zone 64k; server 127.0.0.1:1; }
EOF
    lua_server => <<'EOF',
        # Lua tells what it sees of a dict: capacity, free space.
        location = /dict {
            content_by_lua_block {
                local d = ngx.shared[ngx.var.arg_name]
                ngx.say(d:capacity(), " ", d:free_space())
            }
        }
        # n values: key "kNNNNNNN" (8 bytes), value of len bytes.
        location = /fill {
            content_by_lua_block {
                local d = ngx.shared[ngx.var.arg_name]
                local n, len = tonumber(ngx.var.arg_n), tonumber(ngx.var.arg_len)
                local v = string.rep("v", len)
                local stored, err = 0
                for i = 1, n do
                    local ok
                    ok, err = d:safe_set(string.format("k%07d", i), v)
                    if not ok then break end
                    stored = stored + 1
                end
                ngx.say(stored, " ", err or "ok")
            }
        }
        location = /delete_every_other {
            content_by_lua_block {
                local d = ngx.shared[ngx.var.arg_name]
                local n = tonumber(ngx.var.arg_n)
                for i = 1, n, 2 do d:delete(string.format("k%07d", i)) end
                ngx.say("ok")
            }
        }
        # Takes the dict's slab lock the way ngx_shmtx_lock would, and keeps it:
        # dict[1] is a userdata holding the ngx_shm_zone_t pointer; the zone's
        # shm.addr (after its data pointer) starts with the slab pool's lock word.
        location = /hold_lock {
            content_by_lua_block {
                local ffi = require "ffi"
                local zone = ffi.cast("void **", ngx.shared[ngx.var.arg_name][1])[0]
                local addr = ffi.cast("void **", zone)[1]
                ffi.cast("volatile unsigned long *", addr)[0] = ngx.worker.pid()
                ngx.say(ngx.worker.pid())
            }
        }
EOF
    stream => <<'EOF',
        limit_conn_zone $binary_remote_addr zone=stream_conn_zone:256k;
        upstream stream_backend { zone stream_upstream_zone 128k; server 127.0.0.1:1; }
        server { listen 127.0.0.1:%%PORT_2%%; proxy_pass stream_backend; limit_conn stream_conn_zone 1; }
EOF
);
$t->run;
my $port = $t->port(1);

sub status { my ($j) = $t->get_json($port, '/memory_status' . ($_[0] // '')); $j }
sub zone_of { my ($j, $name) = @_; (grep { $_->{name} eq $name } @{ $j->{zones} })[0] }
sub lua { $t->get($port, $_[0])->{content} }

# --- every zone, its size and owner ------------------------------------------

my %expect = (
    small                => [102400,   'ngx_http_lua_module',          'lua_shared_dict'],
    frag                 => [1048576,  'ngx_http_lua_module',          'lua_shared_dict'],
    big                  => [10547200, 'ngx_http_lua_module',          'lua_shared_dict'],
    req_zone             => [1048576,  'ngx_http_limit_req_module',    'limit_req'],
    conn_zone            => [524288,   'ngx_http_limit_conn_module',   'limit_conn'],
    cache_zone           => [2097152,  'ngx_http_proxy_module',        'proxy_cache keys_zone'],
    ssl_zone             => [1048576,  'ngx_http_ssl_module',          'ssl_session_cache'],
    upstream_zone        => [65536,    'ngx_http_upstream_module',     'upstream zone'],
    stream_conn_zone     => [262144,   'ngx_stream_limit_conn_module', 'limit_conn'],
    stream_upstream_zone => [131072,   'ngx_stream_upstream_module',   'upstream zone'],
    # The module's own: the registry of the server's processes.
    ngx_http_memory_status_module => [524288, 'ngx_http_memory_status_module', 'memory_status registry'],
);
delete @expect{qw(small frag big)} unless $LUA;

my $j = status();
# The module's history zone: its size follows the cores and the history's length.
my $history = zone_of($j, 'ngx_http_memory_status_history');
is($history && $history->{kind}, 'memory_status history', 'the module\'s history zone');
cmp_ok($history->{size_bytes}, '>', 32 * 3 * 200, 'sized for 32 rings of samples at least');
$j->{zones} = [grep { $_->{name} ne 'ngx_http_memory_status_history' } @{ $j->{zones} }];
is_deeply([sort map { $_->{name} } @{ $j->{zones} }], [sort keys %expect], 'every zone listed once');
for my $name (sort keys %expect) {
    my $z = zone_of($j, $name);
    my ($size, $owner, $kind) = @{ $expect{$name} };
    is($z->{size_bytes}, $size, "$name: configured size");
    is($z->{owner}, $owner, "$name: owner");
    is($z->{kind}, $kind, "$name: kind");
    cmp_ok($z->{mapped_bytes}, '>=', $size, "$name: mapped >= size");
    ok(is_uint($z->{loaded_bytes}) && $z->{loaded_bytes} <= $z->{mapped_bytes}, "$name: loaded within mapped");
    my $s = $z->{slab};
    is($s->{page_size_bytes}, 4096, "$name: page size");
    is($s->{pages}{used} + $s->{pages}{free}, $s->{pages_total}, "$name: used + free pages = total");
    is($s->{free_bytes}, $s->{pages}{free} * 4096, "$name: free bytes");
    is_deeply([sort { $a <=> $b } keys %{ $s->{slots} }], [8, 16, 32, 64, 128, 256, 512, 1024, 2048],
        "$name: slots from 8 to half a page");
    is($s->{free_runs_truncated}, JSON::PP::false, "$name: free list walked whole");
}
is(scalar MemoryStatus::unexpected_errors($j), 0, 'no source errors');

# --- free space as Lua sees it ------------------------------------------------

SKIP: {
    skip $NO_LUA, 4 unless $LUA;
    for my $name (qw(small big)) {
        my ($cap, $free) = split ' ', lua("/dict?name=$name");
        my $z = zone_of(status(), $name);
        is($z->{capacity_bytes}, $cap, "$name: capacity_bytes = capacity()");
        is($z->{free_space_bytes}, $free, "$name: free_space_bytes = free_space()");
    }
}
ok(!exists zone_of($j, 'req_zone')->{free_space_bytes}, 'non-dict zones have no free_space_bytes');

# --- N values land in one slot ------------------------------------------------

SKIP: {
    skip $NO_LUA, 12 unless $LUA;
    # A node is 68 bytes of rbtree and dict headers + key + value: 68 + 8 + 100 =
    # 176 bytes, which the slab serves from the 256-byte slot.
    my $n = 1000;
    my $before = zone_of(status(), 'big')->{slab}{slots};
    is(lua("/fill?name=big&n=$n&len=100"), "$n ok\n", "stored $n values of 100 bytes");
    my $after_fill = status();
    my $after = zone_of($after_fill, 'big')->{slab}{slots};
    is($after->{256}{used} - $before->{256}{used}, $n, "slot 256: used rose by $n");
    is($after->{256}{reqs} - $before->{256}{reqs}, $n, "slot 256: reqs rose by $n");
    for my $size (grep { $_ != 256 } keys %$after) {
        is($after->{$size}{used}, $before->{$size}{used}, "slot $size: used unchanged");
    }
    my ($cap, $free) = split ' ', lua('/dict?name=big');
    is(zone_of(status(), 'big')->{free_space_bytes}, $free, 'big after fill: free_space_bytes = free_space()');
}

# --- fill to failure -----------------------------------------------------------

SKIP: {
    skip $NO_LUA, 3 unless $LUA;
    is(zone_of(status(), 'small')->{slab}{slots}{256}{fails}, 0, 'small: no fails yet');
    like(lua('/fill?name=small&n=100000&len=100'), qr/^\d+ no memory$/, 'small filled until "no memory"');
    cmp_ok(zone_of(status(), 'small')->{slab}{slots}{256}{fails}, '>', 0, 'small: fails became non-zero');
}

# --- fragmentation -------------------------------------------------------------

SKIP: {
    skip $NO_LUA, 7 unless $LUA;
    # Values of 3000 bytes take a whole page each (over half a page).
    my $frag0 = zone_of(status(), 'frag')->{slab};
    my ($stored) = lua('/fill?name=frag&n=100000&len=3000') =~ /^(\d+) no memory/;
    ok($stored && $stored > 100, "frag filled with $stored one-page values");
    my $frag1 = zone_of(status(), 'frag')->{slab};
    cmp_ok($frag1->{largest_free_run_pages}, '<=', 1, 'full: no free run larger than a page');
    is(lua("/delete_every_other?name=frag&n=$stored"), "ok\n", 'deleted every other key');
    my $frag2 = zone_of(status(), 'frag')->{slab};
    cmp_ok($frag2->{free_runs}, '>=', $frag1->{free_runs} + int($stored / 2) - 2, "free runs rose by about $stored/2 (to $frag2->{free_runs})");
    cmp_ok($frag2->{pages}{free}, '>=', int($stored / 2), 'half the pages are free again');
    cmp_ok($frag2->{largest_free_run_pages}, '<=', 2, 'yet the largest free run is tiny');
    is($frag2->{largest_free_run_bytes}, $frag2->{largest_free_run_pages} * 4096, 'largest run in bytes');
    diag "frag: $frag2->{pages}{free} free pages in $frag2->{free_runs} runs, largest $frag2->{largest_free_run_pages}";
}

# --- loaded pages against the kernel's view from outside ----------------------

my ($worker) = $t->worker_pids;
SKIP: {
    skip $NO_LUA, 4 unless $LUA;
    like(lua('/fill?name=big&n=1000000&len=200'), qr/no memory/, 'big filled to the brim');
    my $big = zone_of(status(), 'big');
    my $rss = smaps_rss_of_size($worker, $big->{mapped_bytes});
    ok(defined $rss, 'found the zone mapping in /proc/PID/smaps');
    cmp_ok($big->{loaded_bytes}, '>', 0.95 * $big->{size_bytes}, 'big: loaded almost all of it');
    cmp_ok(abs($big->{loaded_bytes} - $rss), '<=', 0.02 * $big->{size_bytes},
        "big: loaded_bytes $big->{loaded_bytes} within 2% of smaps Rss $rss");
}

# --- ?zone= ---------------------------------------------------------------------

SKIP: {
    skip $NO_LUA, 3 unless $LUA;
    my $one = status('?zone=frag');
    is(scalar @{ $one->{zones} }, 1, '?zone=frag: one zone');
    is($one->{zones}[0]{name}, 'frag', '?zone=frag: that zone');
    ok(!exists $one->{process}, '?zone=frag: nothing else');
}
my $missing = $t->get($port, '/memory_status?zone=nope');
is($missing->{status}, 404, 'unknown zone: 404');
is($missing->{content}, "memory_status: no zone named \"nope\"\n", 'unknown zone: one-line reason');
my $bad = $t->get($port, '/memory_status?zone=a&zone=b');
is($bad->{status}, 400, 'zone twice: 400');
like($bad->{content}, qr/^memory_status: argument "zone" given more than once\n\z/, 'zone twice: reason');
my $unknown = $t->get($port, '/memory_status?bogus=1');
is($unknown->{status}, 400, 'unknown argument: 400');
like($unknown->{content}, qr/unknown argument "bogus"/, 'unknown argument: named');

# --- a lock left by a killed worker ---------------------------------------------

# A worker takes the zone's lock and dies with it. nginx's master force-unlocks a
# dead worker's zone locks: the next worker's memory_status must answer, not hang.
my @provoked;
SKIP: {
    skip $NO_LUA, 3 unless $LUA;
    my $holder = lua('/hold_lock?name=frag');
    chomp $holder;
    is($holder, $worker, 'the worker holds the frag lock');
    kill 'KILL', $holder;
    $t->wait_for(sub { my @w = $t->worker_pids; @w && $w[0] != $holder }, 'a new worker');
    my $res = NginxTest->http('GET', $port, '/memory_status?zone=frag');
    is($res->{status}, 200, 'after the holder died: answered (no deadlock)');
    like($t->error_log, qr/shared memory zone "frag" was locked by $holder/, 'nginx force-unlocked the zone');
    @provoked = (
        qr/worker process $holder exited on signal 9/,
        qr/shared memory zone "frag" was locked by $holder/,
    );
}

$t->done_file(allow => \@provoked);
done_testing();
