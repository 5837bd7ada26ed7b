#!/usr/bin/perl

# Findings, each rule provoked for real on a real nginx and checked against
# the figures it rests on: a 1m dict filled past capacity, a dict fragmented,
# a 256m dict barely used, Lua freeing most of 64 MiB, glibc holding what FFI
# freed, aio thread pools making arenas, a huge configuration, a cgroup limit,
# a reload with a download in flight. And their absence where nothing is wrong.

use warnings;
use strict;

use FindBin;
use lib "$FindBin::Bin/lib";

use IO::Select;
use IO::Socket::INET;
use Test::More;
use Time::HiRes qw(sleep time);
use NginxTest qw(read_file_text);
use MemoryStatus qw(unexpected_errors);
use Cgroup qw(make_cgroup write_text);

# Without Debian's Lua module: the findings no Lua provokes (a reload with a
# download in flight, a huge configuration).
my $LUA = NginxTest::has_lua();
my $NO_LUA = "Debian's Lua module is not installed";

my $MiB = 1024 * 1024;

sub findings_of {
    my ($j, $code) = @_;
    return grep { $_->{code} eq $code } @{ $j->{findings} };
}

sub serious {
    my ($j) = @_;
    return grep { $_->{severity} ne 'info' } @{ $j->{findings} };
}

my $t = NginxTest->new;
$t->write_file('lua/mallocer.lua', <<'EOF');
-- Runs in a thread of the pool: glibc gives the thread an arena of its own.
local ffi = require "ffi"
ffi.cdef[[ void *malloc(size_t); void free(void *); int usleep(unsigned int); ]]
local _M = {}
function _M.go()
    local kept = {}
    for i = 1, 100 do kept[i] = ffi.C.malloc(1000) end
    ffi.C.usleep(100000)
    for i = 1, 100 do ffi.C.free(kept[i]) end
    return true
end
return _M
EOF
$t->write_standard_conf(
    lua => $LUA,
    main => 'thread_pool lua threads=4;',
    lua_http => <<'EOF',
    lua_package_path "%%PREFIX%%/lua/?.lua;;";
    lua_shared_dict small 1m;
    lua_shared_dict frag 1m;
    lua_shared_dict huge 256m;
EOF
    server => 'location /files/ { root %%PREFIX%%; limit_rate 32k; }',
    lua_server => <<'EOF',
        # 100-byte values into a 1m dict until it evicts: its slots fail.
        location = /fill {
            content_by_lua_block {
                local d = ngx.shared.small
                local v = string.rep("v", 100)
                local forced = 0
                for i = 1, 20000 do
                    local ok, err, forcible = d:set("k" .. i, v)
                    if forcible then forced = forced + 1 end
                end
                ngx.say(forced)
            }
        }
        # 5000-byte values (two pages each) until full, every other deleted,
        # then 20000-byte values that find no run of five free pages.
        location = /fragment {
            content_by_lua_block {
                local d = ngx.shared.frag
                local v = string.rep("f", 5000)
                local n = 0
                for i = 1, 400 do
                    local ok, err, forcible = d:set("k" .. i, v)
                    if forcible then break end
                    n = i
                end
                for i = 1, n, 2 do d:delete("k" .. i) end
                local big = string.rep("F", 20000)
                local failed = 0
                for i = 1, 10 do
                    if not d:safe_set("b" .. i, big) then failed = failed + 1 end
                end
                ngx.say(failed)
            }
        }
        # 64 MiB of 1 KiB strings, every 16th kept: the collector frees most,
        # the allocator keeps the segments the survivors pin.
        location = /lua_free {
            content_by_lua_block {
                local big = {}
                keep = {}
                local pad = string.rep("x", 1016)
                for i = 1, 65536 do
                    big[i] = pad .. string.format("%08d", i)
                    if i % 16 == 0 then keep[#keep + 1] = big[i] end
                end
                big = nil
                collectgarbage("collect"); collectgarbage("collect")
                ngx.say(collectgarbage("count") * 1024)
            }
        }
        # 80,000 blocks of 1000 bytes from glibc, all but the last freed: the
        # last pins the top, glibc keeps the rest free.
        location = /malloc_free {
            content_by_lua_block {
                local ffi = require "ffi"
                pcall(ffi.cdef, "void *malloc(size_t); void free(void *);")
                local blocks = {}
                for i = 1, 80000 do blocks[i] = ffi.C.malloc(1000) end
                top_block = blocks[80000]
                for i = 1, 79999 do ffi.C.free(blocks[i]) end
                ngx.say("ok")
            }
        }
        # Eight calls at once on the pool's four threads.
        location = /threads {
            content_by_lua_block {
                local threads = {}
                for i = 1, 8 do
                    threads[i] = ngx.thread.spawn(function()
                        return ngx.run_worker_thread("lua", "mallocer", "go")
                    end)
                end
                for i = 1, 8 do ngx.say(tostring(ngx.thread.wait(threads[i]))) end
            }
        }
EOF
);
$t->write_file('files/big.bin', 'x' x (4 * $MiB));
$t->run;
my $port = $t->port(1);

# --- what Lua provokes -----------------------------------------------------------

SKIP: {
    skip $NO_LUA, 47 unless $LUA;

    # --- a fresh server: only the oversized zone ----------------------------------
    {
        my ($j) = $t->get_json($port, '/memory_status');
        is(scalar(serious($j)), 0, 'fresh: no warning or critical finding')
            or diag explain $j->{findings};
        my ($over) = findings_of($j, 'zone_oversized');
        ok($over, 'zone_oversized fires for the 256m dict');
        is($over->{subject}, 'huge', 'on the dict named huge');
        is($over->{severity}, 'info', 'as info');
        my ($huge) = grep { $_->{name} eq 'huge' } @{ $j->{zones} };
        is($over->{evidence}{loaded_bytes}, $huge->{loaded_bytes}, "its evidence is the zone's loaded_bytes ($huge->{loaded_bytes})");
        cmp_ok($over->{evidence}{size_bytes}, '>', 4 * $over->{evidence}{loaded_bytes}, 'more than four times what was loaded');
        ok(!grep({ $_->{subject} ne 'huge' } findings_of($j, 'zone_oversized')), 'the 1m dicts are not oversized');
        ok(!findings_of($j, $_), "fresh: no $_")
            for qw(zone_alloc_failed zone_fragmented glibc_free_held lua_allocator_held cycle_pool_large old_generation_lingering memory_limit swap_used lua_heap_limit);
        my $text = $t->get($port, '/memory_status?format=prometheus')->{content};
        like($text, qr/^nginx_memory_finding\{code="zone_oversized",severity="info",subject="huge"\} 1$/m, 'Prometheus: the finding');
        my $html = $t->get($port, '/memory_status?format=html')->{content};
        like($html, qr{<section id="findings">.*zone_oversized}s, 'HTML: findings at the top');
        is(unexpected_errors($j), 0, 'fresh: no source errors');
    }

    # --- zone_alloc_failed: a 1m dict filled with slot-sized values ---------------
    {
        my ($forced) = $t->get($port, '/fill')->{content} =~ /(\d+)/;
        cmp_ok($forced, '>', 0, "the dict evicted $forced times");
        my ($j) = $t->get_json($port, '/memory_status');
        my ($f) = findings_of($j, 'zone_alloc_failed');
        ok($f, 'zone_alloc_failed fires') or diag explain $j->{findings};
        is($f->{subject}, 'small', 'for the dict small');
        is($f->{severity}, 'warning', 'as a warning');
        my ($small) = grep { $_->{name} eq 'small' } @{ $j->{zones} };
        my $slot = $small->{slab}{slots}{ $f->{evidence}{slot_size_bytes} };
        ok($slot, "the slot size $f->{evidence}{slot_size_bytes} is one of the zone's slots");
        is($f->{evidence}{fails}, $slot->{fails}, "fails $f->{evidence}{fails}, as the slot's");
        like($f->{message}, qr/\b$f->{evidence}{slot_size_bytes}-byte slots\b/, 'the message names the slot size');
    }

    # --- zone_fragmented: every other value deleted, larger ones refused ----------
    {
        my ($failed) = $t->get($port, '/fragment')->{content} =~ /(\d+)/;
        cmp_ok($failed, '>', 0, "safe_set of 20000 bytes failed $failed times though half the zone is free");
        my ($j) = $t->get_json($port, '/memory_status');
        my ($f) = findings_of($j, 'zone_fragmented');
        ok($f, 'zone_fragmented fires') or diag explain $j->{findings};
        is($f->{subject}, 'frag', 'for the dict frag');
        my ($frag) = grep { $_->{name} eq 'frag' } @{ $j->{zones} };
        is($f->{evidence}{largest_free_run_bytes}, $frag->{slab}{largest_free_run_bytes}, 'largest free run, as the zone says');
        cmp_ok($f->{evidence}{largest_free_run_bytes}, '<', 20000, 'smaller than the values refused');
        cmp_ok($f->{evidence}{free_bytes}, '>', 0.3 * $MiB, "free: $f->{evidence}{free_bytes}");
        ok(!grep({ $_->{subject} eq 'small' } findings_of($j, 'zone_fragmented')), 'the full dict is not called fragmented');
    }

    # --- lua_allocator_held: Lua freed most of 64 MiB ------------------------------
    {
        my ($live) = $t->get($port, '/lua_free')->{content} =~ /([\d.]+)/;
        my ($j) = $t->get_json($port, '/memory_status');
        my ($f) = findings_of($j, 'lua_allocator_held');
        ok($f, 'lua_allocator_held fires') or diag explain [$j->{lua}{http}, $j->{findings}];
        like($f->{subject}, qr/^worker 0 \(pid \d+\) lua http$/, "subject: $f->{subject}");
        my $vm = $j->{lua}{http};
        is($f->{evidence}{allocator_mapped_bytes}, $vm->{allocator}{mapped_bytes}, 'mapped, as the VM\'s allocator says');
        cmp_ok($f->{evidence}{allocator_mapped_bytes}, '>', 2 * $f->{evidence}{gc_bytes}, 'more than twice the live heap');
        cmp_ok(abs($f->{evidence}{gc_bytes} - $live), '<', 2 * $MiB, "gc_bytes near Lua's own count after the collection ($live)");
    }

    # --- glibc_free_held: FFI malloc and free, the top pinned ----------------------
    {
        $t->get($port, '/malloc_free');
        my ($j) = $t->get_json($port, '/memory_status');
        my ($f) = findings_of($j, 'glibc_free_held');
        ok($f, 'glibc_free_held fires') or diag explain [$j->{breakdown}{glibc}, $j->{findings}];
        cmp_ok($f->{evidence}{free_bytes}, '>', 70 * $MiB, "glibc holds $f->{evidence}{free_bytes} free");
        is($f->{evidence}{free_bytes}, $j->{breakdown}{glibc}{free_bytes}, 'as the glibc owner says');
        like($f->{message}, qr/malloc_trim/, 'the message points to malloc_trim');
    }

    # --- glibc_arenas: the thread pool's threads allocate --------------------------
    {
        my $out = $t->get($port, '/threads')->{content};
        is(($out =~ tr/\n//), 8, 'eight calls ran in the pool');
        my ($j) = $t->get_json($port, '/memory_status');
        my ($f) = findings_of($j, 'glibc_arenas');
        ok($f, 'glibc_arenas fires') or diag explain [$j->{breakdown}{glibc}, $j->{process}{threads}];
        cmp_ok($f->{evidence}{arena_heaps_found}, '>=', 2, "arenas: $f->{evidence}{arena_heaps_found}");
        is($f->{evidence}{threads}, $j->{process}{threads}, "threads: $f->{evidence}{threads}");
        like($f->{message}, qr/MALLOC_ARENA_MAX/, 'the message names MALLOC_ARENA_MAX');
    }
}

# --- old_generation_lingering: a reload with a download in flight --------------
{
    my $client = IO::Socket::INET->new(PeerAddr => "127.0.0.1:$port", Timeout => 10) or die $!;
    print $client "GET /files/big.bin HTTP/1.1\r\nHost: x\r\n\r\n";
    sysread $client, my $buf, 1024;
    my $master = $t->master_pid;
    kill 'HUP', $master;
    $t->wait_for(sub {
        my ($j) = $t->get_json($port, '/memory_status');
        $j->{server}{old_generation_workers} == 1;
    }, 'the old worker listed');
    my ($early) = $t->get_json($port, '/memory_status');
    ok(!findings_of($early, 'old_generation_lingering'), 'not at once after the reload');
    # The threshold is 30 s after the reload.
    my $j;
    my $deadline = time + 40;
    while (time < $deadline) {
        # Keep the download going: read what arrived.
        sysread $client, $buf, 65536 if IO::Select->new($client)->can_read(0.5);
        ($j) = $t->get_json($port, '/memory_status');
        last if findings_of($j, 'old_generation_lingering');
    }
    my ($f) = findings_of($j, 'old_generation_lingering');
    ok($f, 'old_generation_lingering fires while the old worker serves the download') or diag explain $j->{findings};
    is($f->{evidence}{workers}, 1, 'one old worker');
    cmp_ok($f->{evidence}{since_reload_ms}, '>=', 30_000, "$f->{evidence}{since_reload_ms} ms after the reload");
    is($f->{evidence}{resident_bytes}, $j->{server}{old_generation_resident_bytes}, 'its memory, as server.old_generation_resident_bytes');
    like($f->{message}, qr/worker_shutdown_timeout is not set/, 'says worker_shutdown_timeout is not set');
    close $client;
    $t->wait_for(sub { my ($k) = $t->get_json($port, '/memory_status'); $k->{server}{old_generation_workers} == 0 }, 'the old worker to exit');
    my ($after) = $t->get_json($port, '/memory_status');
    ok(!findings_of($after, 'old_generation_lingering'), 'gone once it exits');
}
$t->done_file(allow => [qr/ngx_slab_alloc\(\) failed: no memory/]);

# --- cycle_pool_large: a configuration with a 200,000-entry map ----------------
{
    my $c = NginxTest->new;
    $c->write_file('map.conf', join '', "map \$uri \$mapped {\n    default 0;\n",
        map({ "    /path/number/$_/with/some/length $_;\n" } 1 .. 200_000), "}\n");
    $c->write_standard_conf(
        connections => 64,
        http => ['map_hash_max_size 1048576;', 'map_hash_bucket_size 256;', 'include map.conf;'],
    );
    $c->run;
    my ($j) = $c->get_json($c->port(1), '/memory_status');
    my ($f) = findings_of($j, 'cycle_pool_large');
    ok($f, 'cycle_pool_large fires') or diag explain [$j->{pools}{cycle}, $j->{findings}];
    is($f->{evidence}{cycle_bytes}, $j->{pools}{cycle}{bytes}, "the cycle pool: $f->{evidence}{cycle_bytes} bytes");
    cmp_ok($f->{evidence}{cycle_bytes}, '>', 16 * $MiB, 'above 16 MiB');
    is(scalar(serious($j)), 0, 'as info only');
    $c->done_file(allow => [qr/could not build optimal map_hash/]);
}

# --- memory_limit: nginx moved into a memory cgroup with a tight limit ----------
SKIP: {
    skip $NO_LUA, 8 unless $LUA;
    my ($dir, $limit_file, $why) = make_cgroup();
    skip "no memory cgroup to create here: $why", 8 unless $dir;
    my $m = NginxTest->new;
    $m->write_standard_conf(
        lua => 1,
        workers => 2,
        connections => 64,
        http => <<'EOF',
            init_worker_by_lua_block {
                held = {}
                local pad = string.rep("m", 65500)
                for i = 1, 256 do held[i] = pad .. i end
            }
            memory_status_interval 1s;
EOF
    );
    $m->run;
    for my $pid ($m->master_pid, $m->worker_pids) {
        open my $fh, '>', "$dir/cgroup.procs" or die "$dir/cgroup.procs: $!";
        print $fh $pid;
        close $fh;
    }
    sleep 2.5;    # every worker walked and published since; cgroup readings are 1 s old at most
    my ($j) = $m->get_json($m->port(1), '/memory_status');
    ok(!findings_of($j, 'memory_limit'), 'no limit yet: no finding');
    my $server = $j->{server}{resident_bytes};
    my $limit = int($server * 1.1 / 4096) * 4096;
    write_text("$dir/$limit_file", $limit);
    sleep 1.2;
    ($j) = $m->get_json($m->port(1), '/memory_status');
    my ($f) = findings_of($j, 'memory_limit');
    ok($f, "memory_limit fires under a limit of $limit") or diag explain $j->{findings};
    is($f->{evidence}{limit_bytes}, $limit, 'the limit, as written in the cgroup');
    cmp_ok($f->{evidence}{lua_headroom_bytes}, '>=', 2 * 16 * $MiB, "the Lua collectors' headroom: $f->{evidence}{lua_headroom_bytes}");
    is($f->{evidence}{projected_bytes}, $f->{evidence}{server_resident_bytes} + $f->{evidence}{lua_headroom_bytes}, 'projected: the server plus the headroom');
    is($f->{severity}, 'critical', 'critical: the projection is past 95%');
    write_text("$dir/$limit_file", 20 * $limit);
    sleep 1.2;
    ($j) = $m->get_json($m->port(1), '/memory_status');
    ok(!findings_of($j, 'memory_limit'), 'a roomy limit: no finding');
    $m->stop;
    rmdir $dir;
    ok(!-d $dir, 'the test cgroup removed');
}

# --- swap_used: a swap file, and a worker pushed past its cgroup's limit ----------
my $SWAP = "/tmp/ngx-memory-status-test-$$.swap";
END { system("swapoff $SWAP 2>/dev/null; rm -f $SWAP") if $SWAP && -e $SWAP }
SKIP: {
    skip $NO_LUA, 5 unless $LUA;
    my ($dir, $limit_file, $why) = make_cgroup();
    skip "no memory cgroup to create here: $why", 5 unless $dir;
    my $on = system("fallocate -l 256M $SWAP && chmod 600 $SWAP && mkswap $SWAP >/dev/null && swapon $SWAP 2>/dev/null") == 0;
    if (!$on) {
        rmdir $dir;
        skip 'swapon is not permitted here: swap_used is proven by unit tests only', 5;
    }
    my $s = NginxTest->new;
    $s->write_standard_conf(lua => 1, connections => 64, server => <<'EOF');
        # 96 MiB of distinct strings, kept.
        location = /hold {
            content_by_lua_block {
                held = {}
                local pad = string.rep("s", 65500)
                for i = 1, 1536 do held[i] = pad .. string.format("%08d", i) end
                ngx.say("ok")
            }
        }
EOF
    $s->run;
    my ($worker) = $s->worker_pids;
    # Charged to the cgroup from now on: its limit pushes the rest to swap.
    write_text("$dir/$limit_file", 64 * $MiB);
    for my $pid ($s->master_pid, $worker) {
        write_text("$dir/cgroup.procs", $pid);
    }
    my ($quiet) = $s->get_json($s->port(1), '/memory_status');
    ok(!findings_of($quiet, 'swap_used'), 'no swap yet: no finding');
    $s->get($s->port(1), '/hold');
    my ($j) = $s->get_json($s->port(1), '/memory_status');
    my ($p) = grep { $_->{pid} == $worker } @{ $j->{processes} };
    cmp_ok($p->{swap_bytes}, '>', 16 * $MiB, "the worker has $p->{swap_bytes} bytes in swap");
    my ($f) = grep { $_->{subject} =~ /\(pid $worker\)/ } findings_of($j, 'swap_used');
    ok($f, 'swap_used fires for the worker') or diag explain $j->{findings};
    is($f->{evidence}{swap_bytes}, $p->{swap_bytes}, 'its evidence: the worker\'s swap_bytes');
    is($f->{severity}, 'warning', 'a warning');
    $s->stop;
    rmdir $dir;
    system("swapoff $SWAP; rm -f $SWAP");
}

done_testing;
