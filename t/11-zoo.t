#!/usr/bin/perl

# A zoo of real configurations, each started for real and loaded for real, each
# checked by the same rule at both depths on every worker: the owners and
# unattributed add up to RSS exactly, unattributed is at most 5% of RSS, and
# every owner whose source could be read is there. The shares measured are
# printed (TEST_VERBOSE or prove -v) for the README's table.

use warnings;
use strict;

use FindBin;
use lib "$FindBin::Bin/lib";

use File::Path qw(make_path);
use IPC::Open2 qw(open2);
use Test::More;
use NginxTest qw(read_file_text);
use MemoryStatus qw(unexpected_errors resident_sum);

# Without Debian's Lua module the shapes that need no Lua run.
my $LUA = NginxTest::has_lua();
my $NO_LUA = "Debian's Lua module is not installed";

my $MiB = 1024 * 1024;
my $MAX_SHARE = 0.05;
# The kernel batches RSS counter updates per CPU (up to 31 pages per counter
# per CPU before /proc/PID/status shows them): unattributed may dip below zero
# by that much, as the owners' pages are counted exactly.
my $LAG = 3 * 31 * 4096 * 2;
my $JS = "$NginxTest::MODULES_DIR/ngx_http_js_module.so";

# The rule, for one answer. %opt: lua => the http Lua VM is there;
# unattributed_ok => a reason unattributed may exceed 5% (then it is not checked).
sub check_rule {
    my ($j, $what, %opt) = @_;
    my $b = $j->{breakdown};
    my $rss = $j->{process}{resident_bytes};
    is(resident_sum($j), $rss, "$what: owners + unattributed = resident_bytes");
    my $share = $b->{unattributed}{resident_bytes} / $rss;
    if ($opt{unattributed_ok}) {
        note(sprintf '%s: unattributed %.1f%% (%s)', $what, 100 * $share, $opt{unattributed_ok});
    } else {
        cmp_ok($share, '<=', $MAX_SHARE, sprintf '%s: unattributed %.2f%% of %.1f MiB', $what, 100 * $share, $rss / $MiB);
    }
    cmp_ok($b->{unattributed}{resident_bytes}, '>=', -$LAG, "$what: unattributed not below the counters' lag");
    my @readable = (qw(glibc shm text stacks), $opt{lua} ? 'lua_http' : ());
    @readable = grep { $_ ne 'glibc' } @readable if $opt{no_glibc};
    ok(!grep({ !defined $b->{$_} || !defined $b->{$_}{resident_bytes} } @readable),
        "$what: @readable measured");
    is(scalar unexpected_errors($j), 0, "$what: no source errors")
        or diag explain [unexpected_errors($j)];
    return $share;
}

# Asks until every worker answered at both depths (reuseport spreads new
# connections); checks each answer. Returns the answers of the first worker.
sub check_every_worker {
    my ($t, $port, $what, %opt) = @_;
    my @workers = $t->worker_pids;
    my %seen;
    my $first;
    for my $try (1 .. 400) {
        last if @workers == grep { $seen{$_}{default} && $seen{$_}{full} } @workers;
        for my $depth (qw(default full)) {
            my ($j) = $t->get_json($port, '/memory_status' . ($depth eq 'full' ? '?detail=full' : ''));
            my $pid = $j->{nginx}{pid};
            next if $seen{$pid}{$depth}++;
            my $share = check_rule($j, "$what, worker $pid, $depth", %opt);
            $first //= $j;
            diag(sprintf 'zoo | %s | %s | %.2f%% of %.1f MiB', $what, $depth, 100 * $share,
                $j->{process}{resident_bytes} / $MiB) if $ENV{TEST_VERBOSE};
        }
    }
    is(scalar(grep { $seen{$_}{default} && $seen{$_}{full} } @workers), scalar @workers,
        "$what: all " . @workers . ' workers answered at both depths');
    return $first;
}

# Starts nginx with standard_conf(%$conf).
sub start {
    my ($conf, %run) = @_;
    my $t = NginxTest->new;
    $t->write_standard_conf(%$conf);
    $t->run(%run);
    return $t;
}

sub http_ok {
    my ($t, $port, $path, $what) = @_;
    my $r = $t->get($port, $path);
    is($r->{status}, 200, "$what: GET $path") or diag $r->{content};
    return $r->{content};
}

# --- the demo: nginx-conf/lua-shared-dicts.conf, as scripts/demo runs it --------

SKIP: {
    skip $NO_LUA, 30 unless $LUA;
    my $t = NginxTest->new;
    my $conf = read_file_text("$NginxTest::ROOT/nginx-conf/lua-shared-dicts.conf");
    my $p = $t->prefix;
    $conf =~ s{load_module modules/ngx_http_memory_status_module\.so;}{%%LOAD_MODULE%%};
    $conf =~ s{load_module modules/}{load_module $NginxTest::MODULES_DIR/}g;
    $conf =~ s{^(pid|error_log) .*$}{}mg;
    $conf =~ s{temp/}{$p/}g;
    $conf =~ s{listen 127\.0\.0\.1:8089;}{listen 127.0.0.1:%%PORT_1%% reuseport;};
    $conf =~ s{worker_processes 2;}{worker_processes 2;\n%%TEST_GLOBALS%%};
    $t->write_file_expand('nginx.conf', $conf);
    $t->run;
    my $port = $t->port(1);
    like(http_ok($t, $port, "/fill?n=$_", 'demo'), qr/^stored/, 'demo: filled') for (20000) x 4;
    check_every_worker($t, $port, 'demo', lua => 1);
    $t->done_file;
}

# --- Lua heavy: many small FFI allocations, and threads that malloc ----------------

SKIP: {
    skip $NO_LUA, 33 unless $LUA;
    my $t = start({
        lua => 1,
        http => <<'EOF',
    init_by_lua_block {
        local ffi = require "ffi"
        ffi.cdef[[
            void *malloc(size_t); void *memset(void *, int, size_t);
            typedef unsigned long pthread_t;
            int pthread_create(pthread_t *, const void *, void *(*)(void *), void *);
            int pthread_join(pthread_t, void **);
            char *strdup(const char *);
        ]]
    }
EOF
        server => <<'EOF',
        # 200,000 blocks of 96 bytes: the main arena's heap grows in the worker.
        location = /small {
            content_by_lua_block {
                local ffi = require "ffi"
                held = held or {}
                for i = 1, 200000 do
                    local p = ffi.C.malloc(96)
                    ffi.C.memset(p, 1, 96)
                    held[#held + 1] = p
                end
                ngx.say(#held)
            }
        }
        # 200 threads, one after the other, each strdup-ing 100 KB (below the
        # mmap threshold): they malloc from an arena of their own, in a heap
        # of its own, and the copies stay.
        location = /threads {
            content_by_lua_block {
                local ffi = require "ffi"
                local s = string.rep("t", 100000)
                local t = ffi.new("pthread_t[1]")
                local start = ffi.cast("void *(*)(void *)", ffi.C.strdup)
                for i = 1, 200 do
                    assert(ffi.C.pthread_create(t, nil, start, ffi.cast("void *", s)) == 0)
                    ffi.C.pthread_join(t[0], nil)
                end
                ngx.say("ok")
            }
        }
EOF
    });
    my $port = $t->port(1);
    my ($j0) = $t->get_json($port, '/memory_status');
    is(http_ok($t, $port, '/small', 'Lua FFI'), "200000\n", 'Lua FFI: 200,000 small blocks');
    my $j1 = check_every_worker($t, $port, 'Lua FFI small blocks', lua => 1);
    my ($g0, $g1) = ($j0->{breakdown}{glibc}, $j1->{breakdown}{glibc});
    cmp_ok($g1->{resident_bytes} - $g0->{resident_bytes}, '>=', 200000 * 96,
        'Lua FFI: glibc resident grew by the 19 MB malloc\'d');
    cmp_ok($g1->{main_heap_pieces}, '>=', 1, "Lua FFI: [heap] in $g1->{main_heap_pieces} pieces");
    is(http_ok($t, $port, '/threads', 'threads'), "ok\n", 'threads: 200 threads strdup 100 KB each');
    my $j2 = check_every_worker($t, $port, 'threads that malloc', lua => 1);
    my $g2 = $j2->{breakdown}{glibc};
    cmp_ok($g2->{arena_heaps_found}, '>=', 1, "threads: $g2->{arena_heaps_found} arena heap(s) found");
    cmp_ok($g2->{arena_heap_bytes}, '>=', 200 * 100000, 'threads: arena heaps hold the 20 MB copied');
    cmp_ok($g2->{resident_bytes} - $g1->{resident_bytes}, '>=', 200 * 100000, 'threads: glibc resident grew by 20 MB');
    # mallinfo2's arena is every arena's system memory: the main heap (brk) and
    # each other arena's heap size, found independently in the address space.
    cmp_ok(abs($g2->{main_heap_bytes} + $g2->{arena_heap_bytes} - $g2->{arena_bytes}), '<=', 64 * 1024,
        "threads: [heap] + arena heaps ($g2->{main_heap_bytes} + $g2->{arena_heap_bytes}) = mallinfo2 arena ($g2->{arena_bytes})");
    $t->done_file(allow => [qr/writing a global Lua variable/]);
}

# --- njs: js_content building strings ------------------------------------------------

SKIP: {
    skip 'njs (libnginx-mod-http-js) not installed', 1 unless -f $JS;
    my $t = NginxTest->new;
    $t->write_file('build.js', <<'EOF');
function build(r) {
    var parts = [];
    for (var i = 0; i < 20000; i++) {
        parts.push('v'.repeat(100) + i);
    }
    var s = parts.join(',');
    r.return(200, s.length + '\n');
}
export default { build };
EOF
    $t->write_standard_conf(
        load => ["load_module $JS;", 'module'],
        http => 'js_import main from %%PREFIX%%/build.js;',
        server => 'location = /build { js_content main.build; }',
    );
    $t->run;
    my $port = $t->port(1);
    like(http_ok($t, $port, '/build', 'njs'), qr/^\d{6,}$/, 'njs: built a string') for 1 .. 20;
    check_every_worker($t, $port, 'njs js_content');
    $t->done_file;
}

# --- aio threads serving files, a pool of 8 ------------------------------------------

{
    my $t = NginxTest->new;
    my $html = $t->prefix . '/html';
    make_path($html);
    for my $n (1 .. 16) {
        open my $fh, '>', "$html/f$n" or die $!;
        print $fh 'x' x (2 * $MiB);
        close $fh;
    }
    $t->write_standard_conf(
        main => 'thread_pool default threads=8;',
        connections => 256,
        server => 'location / { root %%PREFIX%%/html; aio threads; sendfile off; output_buffers 2 256k; }',
    );
    $t->run;
    my $port = $t->port(1);
    $t->write_file('urls', join '', map { "url = http://127.0.0.1:$port/f" . (1 + $_ % 16) . "\noutput = /dev/null\n" } 1 .. 200);
    my $bytes = `curl -s --no-progress-meter --parallel --parallel-max 32 -K @{[ $t->prefix ]}/urls -w '%{size_download}\\n' | awk '{s+=\$1} END {print s}'`;
    chomp $bytes;
    is($bytes, 200 * 2 * $MiB, 'aio threads: 200 files of 2 MiB served, 32 at a time');
    my $j = check_every_worker($t, $port, 'aio threads (8)');
    # main, the pool's 8, the module's measuring thread.
    is($j->{breakdown}{stacks}{stacks_found}, 10, 'aio threads: 10 stacks found');
    $t->done_file;
}

# --- proxy_cache_path: cache manager and loader ----------------------------------------

{
    my $t = start({
        connections => 256,
        http => 'proxy_cache_path %%PREFIX%%/cache levels=1:2 keys_zone=pages:10m max_size=256m;',
        server => 'location / { proxy_pass http://127.0.0.1:%%PORT_2%%; proxy_cache pages; proxy_cache_valid 200 10m; }',
        servers => <<'EOF',
            server {
                listen 127.0.0.1:%%PORT_2%%;
                location / { return 200 "page $uri $request_id\n"; }
            }
EOF
    });
    my $port = $t->port(1);
    my $master = $t->master_pid;
    # The master starts them after the workers: wait for both.
    my @titles;
    my $helpers_up = sub {
        my @helpers = grep {
            (read_file_text("/proc/$_/stat") // '') =~ /^\d+ \(.*\) \S $master /
        } map { m{/proc/(\d+)$} ? $1 : () } glob '/proc/[0-9]*';
        @titles = sort map { (read_file_text("/proc/$_/cmdline") // '') =~ s/\0.*//sr } @helpers;
        (grep { /cache manager process/ } @titles) && (grep { /cache loader process/ } @titles);
    };
    ok(eval { $t->wait_for($helpers_up, 'cache manager and loader') },
        'proxy_cache: cache manager and loader are running') or diag explain \@titles;
    $t->write_file('urls', join '', map { "url = http://127.0.0.1:$port/p$_\noutput = /dev/null\n" } 1 .. 2000);
    my $ok = `curl -s --no-progress-meter --parallel --parallel-max 16 -K @{[ $t->prefix ]}/urls -w '%{http_code}\\n' | grep -c '^200'`;
    is($ok + 0, 2000, 'proxy_cache: 2000 pages fetched through the cache');
    my $j = check_every_worker($t, $port, 'proxy_cache');
    my ($zone) = grep { $_->{name} eq 'pages' } @{ $j->{zones} };
    is($zone->{owner}, 'ngx_http_proxy_module', 'proxy_cache: the keys zone is listed');
    $t->done_file;
}

# --- HTTP/2: 100 concurrent streams ------------------------------------------------------

SKIP: {
    skip 'h2load (nghttp2-client) not installed', 1 unless -x '/usr/bin/h2load';
    my $t = start({
        connections => 256,
        http => 'keepalive_requests 100000;',
        listen => ['%%PORT_1%% http2', '%%PORT_2%%'],
        server => 'location / { return 200 "stream $request_id\n"; }',
    });
    my $out = `h2load -n 20000 -c 4 -m 100 http://127.0.0.1:@{[ $t->port(1) ]}/x 2>&1`;
    like($out, qr/20000 succeeded/, 'HTTP/2: 20,000 requests, 100 streams at a time on 4 connections')
        or diag $out;
    check_every_worker($t, $t->port(2), 'HTTP/2 100 streams');
    $t->done_file;
}

# --- 10,000 idle keep-alive connections -------------------------------------------------

{
    # As many descriptors as the hard limit allows (raising it needs a capability
    # a container may not have).
    my $nofile = `sh -c 'ulimit -Hn'`;
    chomp $nofile;
    $nofile = 30000 if $nofile eq 'unlimited' || $nofile > 30000;
    my $t = start({
        main => "worker_rlimit_nofile $nofile;",
        connections => 12000,
        http => ['keepalive_timeout 300s;', 'keepalive_requests 100000;'],
        listen => '%%PORT_1%% backlog=16384',
        server => 'location / { return 200 "ok\n"; }',
    });
    my $port = $t->port(1);
    # A helper holds the connections, each after one request, until told to stop.
    my $holder = $t->prefix . '/hold.py';
    $t->write_file('hold.py', <<'EOF');
import resource, socket, sys
_, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
port, n = int(sys.argv[1]), int(sys.argv[2])
held = []
for i in range(n):
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(b"GET /k HTTP/1.1\r\nHost: x\r\n\r\n")
    got = b""
    while not got.endswith(b"ok\n"):
        got += s.recv(4096)
    held.append(s)
print(len(held), flush=True)
sys.stdin.read()
EOF
    my $pid = open2(my $hold, my $release, 'python3', $holder, $port, 10000);
    my $held = <$hold>;
    is($held, "10000\n", 'keep-alive: 10,000 connections held open, each after a request');
    my $j = check_every_worker($t, $port, '10k idle keep-alive');
    cmp_ok($j->{pools}{connections}{http}, '>=', 10000, 'keep-alive: the pools see them')
        if ref $j->{pools}{connections} eq 'HASH' && exists $j->{pools}{connections}{http};
    close $release;
    waitpid $pid, 0;
    $t->done_file;
}

# --- a 256 MiB zone filled by another worker -----------------------------------------------

SKIP: {
    skip $NO_LUA, 25 unless $LUA;
    my $t = start({
        lua => 1,
        workers => 2,
        http => 'lua_shared_dict big 256m;',
        listen => '%%PORT_1%% reuseport',
        server => <<'EOF',
        location = /fill {
            content_by_lua_block {
                local d = ngx.shared.big
                local v = string.rep("v", 200)
                local i = 0
                repeat i = i + 1 until not d:safe_set(string.format("k%09d", i), v)
                ngx.say(ngx.worker.pid())
            }
        }
EOF
    });
    my $port = $t->port(1);
    my $filler = http_ok($t, $port, '/fill', '256 MiB zone');
    chomp $filler;
    my $other;
    for (1 .. 200) {
        my ($j) = $t->get_json($port, '/memory_status');
        next if $j->{nginx}{pid} == $filler;
        $other = $j;
        last;
    }
    ok($other, 'a worker that did not fill the zone answers');
    my ($big) = grep { $_->{name} eq 'big' } @{ $other->{zones} };
    cmp_ok($big->{loaded_bytes}, '>=', 250 * $MiB, 'the zone is loaded (by the other worker)');
    check_every_worker($t, $port, '256 MiB zone filled by another worker', lua => 1);
    $t->done_file;
}

# --- worker_processes 4: every worker ------------------------------------------------------

SKIP: {
    skip $NO_LUA, 63 unless $LUA;
    my $t = start({
        lua => 1,
        workers => 4,
        http => 'lua_shared_dict sessions 10m;',
        listen => '%%PORT_1%% reuseport',
        server => <<'EOF',
        location = /fill {
            content_by_lua_block {
                for i = 1, 5000 do ngx.shared.sessions:set(ngx.worker.pid() .. ":" .. i, string.rep("v", 100)) end
                ngx.say("ok")
            }
        }
EOF
    });
    my $port = $t->port(1);
    http_ok($t, $port, '/fill', '4 workers') for 1 .. 20;
    my @workers = $t->worker_pids;
    is(scalar @workers, 4, 'four workers');
    check_every_worker($t, $port, '4 workers', lua => 1);
    $t->done_file;
}

# --- jemalloc and tcmalloc preloaded: their memory is named, not hidden ----------------------

for my $case (['jemalloc', 'libjemalloc.so.2'], ['tcmalloc', 'libtcmalloc_minimal.so.4']) {
    my ($name, $lib) = @$case;
    my ($path) = grep { -f } map { "$_/$lib" } qw(/usr/lib/x86_64-linux-gnu /usr/lib);
    SKIP: {
        skip $NO_LUA, 14 unless $LUA;
        skip "$lib not installed", 1 unless $path;
        my $t = start({ lua => 1, server => <<'EOF' }, env => { LD_PRELOAD => $path });
        location = /small {
            content_by_lua_block {
                local ffi = require "ffi"
                pcall(ffi.cdef, "void *malloc(size_t); void *memset(void *, int, size_t);")
                held = held or {}
                for i = 1, 100000 do
                    local p = ffi.C.malloc(200)
                    ffi.C.memset(p, 1, 200)
                    held[#held + 1] = p
                end
                ngx.say("ok")
            }
        }
EOF
        my $port = $t->port(1);
        http_ok($t, $port, '/small', $name);
        my $j = check_every_worker($t, $port, "$name preloaded", lua => 1, no_glibc => 1,
            unattributed_ok => "$name\'s pages cannot be told from other anonymous memory");
        my $u = $j->{breakdown}{unattributed};
        is_deeply($u->{includes}, ['other_allocators'], "$name: unattributed says it holds other_allocators' pages");
        is($j->{breakdown}{other_allocators}{name}, $name, "$name: other_allocators names it");
        cmp_ok($u->{resident_bytes}, '>=', 100000 * 200,
            "$name: the 20 MB malloc'd through $name is in unattributed");
        $t->done_file(allow => [qr/writing a global Lua variable/]);
    }
}

done_testing();
