#!/usr/bin/perl

# The breakdown: every owner's figure against a source no code of ours
# computes (Lua's collectgarbage, the kernel's /proc/PID/maps and smaps read
# from outside), and the owners adding up to RSS at both depths.

use warnings;
use strict;

use FindBin;
use lib "$FindBin::Bin/lib";

use JSON::PP qw(decode_json);
use Test::More;
use Time::HiRes ();
use NginxTest qw(read_file_text proc_status_bytes smaps_rss_of_size);
use MemoryStatus qw(check_base_shape unexpected_errors resident_sum);

# Without Debian's Lua module: the shape, text and the sums, not what Lua
# allocates or fills.
my $LUA = NginxTest::has_lua();
my $NO_LUA = "Debian's Lua module is not installed";

my $MiB = 1024 * 1024;

my $t = NginxTest->new;
$t->write_standard_conf(
    lua => $LUA,
    lua_http => 'lua_shared_dict sixteen 16m;',
    lua_server => <<'EOF',
        location = /compare {
            content_by_lua_block {
                collectgarbage("stop")
                local before = collectgarbage("count") * 1024
                local res = ngx.location.capture("/memory_status")
                collectgarbage("restart")
                ngx.say(string.format("%.0f", before))
                ngx.print(res.body)
            }
        }
        location = /lua_allocate {
            content_by_lua_block {
                big = {}
                local pad = string.rep("x", 1016)
                for i = 1, 65536 do big[i] = pad .. string.format("%08d", i) end
                ngx.say("ok")
            }
        }
        # 200 strings of 1 MiB (LuaJIT maps each by itself, unless its free
        # segment space takes it), then 4 glibc chunks of 40 MiB (above glibc's
        # largest mmap threshold) with their first half written.
        location = /chunks {
            content_by_lua_block {
                strings = {}
                for i = 1, 200 do strings[i] = string.rep("s", 1048576 - 64) .. i end
                local ffi = require "ffi"
                pcall(ffi.cdef, "void *malloc(size_t); void free(void *); void *memset(void *, int, size_t);")
                blocks = {}
                for i = 1, 4 do
                    blocks[i] = ffi.C.malloc(40 * 1048576)
                    ffi.C.memset(blocks[i], 1, 20 * 1048576)
                end
                ngx.say("ok")
            }
        }
        location = /chunks_half {
            content_by_lua_block {
                for i = 1, 100 do strings[i] = false end
                collectgarbage("collect"); collectgarbage("collect")
                ngx.say("ok")
            }
        }
        # A string.buffer of 64 MiB: reserved (mapped, not written), then
        # written in place.
        location = /buffer {
            content_by_lua_block {
                local ffi = require "ffi"
                if ngx.var.arg_op == "reserve" then
                    sbuf = require("string.buffer").new()
                    sptr, slen = sbuf:reserve(64 * 1048576)
                elseif ngx.var.arg_op == "fill" then
                    ffi.fill(sptr, slen, 1)
                    sbuf:commit(slen)
                else
                    sbuf = nil; sptr = nil
                    collectgarbage("collect"); collectgarbage("collect")
                end
                ngx.say("ok")
            }
        }
        location = /chunks_free {
            content_by_lua_block {
                local ffi = require "ffi"
                for i = 1, #blocks do ffi.C.free(blocks[i]) end
                blocks = nil; strings = nil
                collectgarbage("collect"); collectgarbage("collect")
                ngx.say("ok")
            }
        }
        location = /lua_free {
            content_by_lua_block { big = nil; collectgarbage("collect"); collectgarbage("collect"); ngx.say("ok") }
        }
        location = /malloc {
            content_by_lua_block {
                local ffi = require "ffi"
                pcall(ffi.cdef, "void *malloc(size_t); void free(void *); void *memset(void *, int, size_t);")
                local n = 32 * 1024 * 1024
                block = ffi.C.malloc(n)
                ffi.C.memset(block, 1, n)
                ngx.say("ok")
            }
        }
        location = /free {
            content_by_lua_block {
                local ffi = require "ffi"
                ffi.C.free(block)
                block = nil
                ngx.say("ok")
            }
        }
        location = /fill {
            content_by_lua_block {
                local d = ngx.shared.sixteen
                local v = string.rep("v", 200)
                local i = 0
                repeat i = i + 1 until not d:safe_set(string.format("k%08d", i), v)
                ngx.say(i)
            }
        }
EOF
);
$t->run;
my $port = $t->port(1);
my ($worker) = $t->worker_pids;

sub status {
    my ($query) = @_;
    my ($j) = $t->get_json($port, '/memory_status' . ($query // ''));
    return $j;
}

# The pie adds up to RSS, and what no owner claims stays small.
sub check_sums {
    my ($j, $what) = @_;
    my $b = $j->{breakdown};
    is(resident_sum($j), $j->{process}{resident_bytes}, "$what: owners + unattributed = process.resident_bytes");
    my $share = $b->{unattributed}{resident_bytes} / $j->{process}{resident_bytes};
    cmp_ok($share, '<=', 0.05, sprintf('%s: unattributed %.1f%% of resident', $what, 100 * $share));
    # The kernel batches RSS counter updates per CPU (up to 31 pages per counter
    # per CPU before they show in /proc/PID/status), while the owners' pages are
    # counted exactly: unattributed may dip below zero by that much, no more.
    cmp_ok($b->{unattributed}{resident_bytes}, '>=', -3 * 31 * 4096 * 2, "$what: unattributed not below the counters' lag");
    is($b->{unattributed}{measure}, 'resident', "$what: unattributed measure");
    is(scalar unexpected_errors($j), 0, "$what: no source errors") or diag explain [unexpected_errors($j)];
    return $b;
}

sub both_depths {
    my ($what) = @_;
    my $j = status();
    check_sums($j, "$what (default)");
    my $full = status('?detail=full');
    check_sums($full, "$what (detail)");
    return ($j, $full);
}

# --- the shape ------------------------------------------------------------------

my ($j0, $full0) = both_depths('idle');
check_base_shape($j0, 'default');
for my $owner (qw(glibc shm), ($LUA ? 'lua_http' : ()), qw(text stacks)) {
    my $o = $j0->{breakdown}{$owner};
    ok($o, "$owner present");
    like($o->{measure}, qr/^(allocated|loaded|mapped)$/, "$owner: measure $o->{measure}");
    ok(defined $o->{resident_bytes}, "$owner: resident_bytes measured");
}
is($j0->{breakdown}{lua_stream}, undef, 'lua_stream null (no stream Lua module)');
is($j0->{breakdown}{other_allocators}, undef, 'other_allocators null: not present');
ok(!exists $j0->{breakdown}{text}{mappings}, 'default depth: no mapping lists');
ok($full0->{breakdown}{text}{mappings} && @{ $full0->{breakdown}{text}{per_file} }, 'detail: mappings and per-file list');
ok(!grep({ exists $_->{start} } @{ $full0->{breakdown}{unattributed}{mappings} }), 'detail: no addresses');
ok(defined $full0->{breakdown}{text}{pss_bytes}, 'detail: PSS');
# The main arena and the measuring thread's (it allocates off the event loop).
my $g0full = $full0->{breakdown}{glibc};
cmp_ok($g0full->{arenas}, '>=', 1, "detail: $g0full->{arenas} glibc arena(s)");
is($g0full->{arena_heaps_found}, $g0full->{arenas} - 1, 'detail: every arena but the main one has its heap found');
my $v = $j0->{virtual};
is($v->{resident_bytes} + $v->{swap_bytes} + $v->{untouched_bytes}, $v->{virtual_bytes}, 'virtual = resident + swap + untouched');
SKIP: {
    skip $NO_LUA, 1 unless $LUA;
    cmp_ok($v->{untouched_bytes}, '>', 16 * $MiB, 'the 16 MiB dict is mostly untouched virtual space');
}

# --- text against /proc/PID/maps from outside -------------------------------------

my $exec = 0;
for (split /\n/, read_file_text("/proc/$worker/maps")) {
    my ($lo, $hi, $perms, $path) = /^([0-9a-f]+)-([0-9a-f]+) (\S+) \S+ \S+ \S+\s*(.*)$/ or next;
    next unless $perms =~ /x/ && $path =~ m{^/};
    no warnings 'portable';
    $exec += hex($hi) - hex($lo);
}
is($j0->{breakdown}{text}{bytes}, $exec, "text = executable file mappings in /proc/PID/maps ($exec)");

# --- what Lua allocates and fills ---------------------------------------------------

SKIP: {
    skip $NO_LUA, 89 unless $LUA;

    # --- Lua: 64 MiB ----------------------------------------------------------------------

    sub compare_lua {
        my ($what) = @_;
        my ($before, $json) = $t->get($port, '/compare')->{content} =~ /^(\d+)\n(.*)\z/s or die 'bad /compare';
        my $j = decode_json($json);
        NginxTest::spool_answer($json);
        my $bytes = $j->{breakdown}{lua_http}{bytes};
        cmp_ok(abs($bytes - $before), '<=', 0.01 * $before,
            "$what: lua_http.bytes $bytes within 1% of collectgarbage $before");
        return $j;
    }
    my $lua0 = compare_lua('idle');
    is($t->get($port, '/lua_allocate')->{content}, "ok\n", 'Lua allocated 64 MiB');
    my $lua1 = compare_lua('after 64 MiB');
    cmp_ok($lua1->{breakdown}{lua_http}{bytes} - $lua0->{breakdown}{lua_http}{bytes}, '>=', 64 * $MiB, 'lua_http.bytes rose by 64 MiB');
    cmp_ok($lua1->{breakdown}{lua_http}{resident_bytes} - $lua0->{breakdown}{lua_http}{resident_bytes}, '>=', 64 * $MiB,
        'lua_http.resident_bytes rose by 64 MiB');
    cmp_ok($lua1->{breakdown}{lua_http}{direct_chunks_found}, '>=', 1, 'the big table array is a direct LuaJIT chunk, found');
    both_depths('Lua holding 64 MiB');
    is($t->get($port, '/lua_free')->{content}, "ok\n", 'Lua freed it');
    my $freed = compare_lua('after free');
    # Strings of 1 MiB go into a free chunk of the segments where one fits,
    # else into a mapping of their own: at most this many fit in the free
    # space the 64 MiB left (how many do depends on its fragmentation).
    my $room = int($freed->{lua}{http}{allocator}{free_bytes} / $MiB);

    # --- many directly mapped chunks: each found, its resident pages counted -------------

    is($t->get($port, '/chunks')->{content}, "ok\n", '200 Lua strings of 1 MiB and 4 glibc chunks of 40 MiB');
    for my $j (both_depths('200 + 4 big chunks')) {
        my ($l, $g) = @{ $j->{breakdown} }{qw(lua_http glibc)};
        my $found = $l->{direct_chunks_found};
        cmp_ok($found, '>=', 200 - $room, "Lua: $found direct chunks found (the rest in its segments' $room MiB free)");
        cmp_ok($l->{direct_resident_bytes}, '>=', ($found - 4) * $MiB, "Lua: their $l->{direct_resident_bytes} resident bytes");
        cmp_ok($l->{direct_resident_bytes}, '<=', $found * ($MiB + 8192) + 16 * $MiB, 'Lua: not more than their mappings');
        cmp_ok($l->{resident_bytes}, '>=', 200 * $MiB, "Lua: resident $l->{resident_bytes} holds the 200 MiB");
        cmp_ok($g->{mmapped_chunks}, '>=', 4, "glibc counts $g->{mmapped_chunks} mapped chunks");
        is($g->{mmapped_chunks_found}, $g->{mmapped_chunks}, 'glibc: every mapped chunk found');
        cmp_ok($g->{mmapped_resident_bytes}, '>=', 80 * $MiB, "glibc: their $g->{mmapped_resident_bytes} resident bytes hold the written halves");
        cmp_ok($g->{mmapped_resident_bytes}, '<=', $g->{mmapped_bytes} - 80 * $MiB + 4 * 8192,
            'glibc: and not the halves never written');
    }
    # The chunks' walk is kept while the words it read read the same; their
    # residency is measured at every answer; half the strings freed, the walk is
    # new.
    my $first = status()->{breakdown};
    my $again = status()->{breakdown};
    my ($l1, $l2) = ($first->{lua_http}, $again->{lua_http});
    is($l2->{direct_chunks_found}, $l1->{direct_chunks_found}, 'Lua: the same chunks at the next answer');
    cmp_ok(abs($l2->{direct_resident_bytes} - $l1->{direct_resident_bytes}), '<=', $MiB, 'Lua: the same resident bytes');
    is($again->{glibc}{mmapped_chunks_found}, $again->{glibc}{mmapped_chunks}, 'glibc: its chunks still all found');
    is($t->get($port, '/chunks_half')->{content}, "ok\n", 'half the strings freed');
    my $half = status()->{breakdown}{lua_http};
    my $gone = $l1->{direct_chunks_found} - $half->{direct_chunks_found};
    cmp_ok($gone, '>=', 100 - $room,
        "Lua: the freed chunks are gone at once ($half->{direct_chunks_found} of $l1->{direct_chunks_found} left)");
    cmp_ok($half->{direct_resident_bytes}, '<=', $l1->{direct_resident_bytes} - ($gone - 1) * $MiB, 'Lua: and their resident bytes');
    cmp_ok($half->{direct_resident_bytes}, '>=', ($half->{direct_chunks_found} - 4) * $MiB, 'Lua: the chunks left still counted');
    is($t->get($port, '/chunks_free')->{content}, "ok\n", 'chunks freed');

    # A chunk's pages become resident as the program writes them, which changes no
    # header: a string.buffer reserved, then written in place.
    is($t->get($port, '/buffer?op=reserve')->{content}, "ok\n", 'a string.buffer of 64 MiB reserved');
    my $reserved = status()->{breakdown}{lua_http};
    status();
    is($t->get($port, '/buffer?op=fill')->{content}, "ok\n", 'and written');
    my $written = status()->{breakdown}{lua_http};
    cmp_ok($written->{direct_resident_bytes} - $reserved->{direct_resident_bytes}, '>=', 63 * $MiB,
        "Lua: its 64 MiB written counted at the next answer ($reserved->{direct_resident_bytes} then $written->{direct_resident_bytes})");
    is($t->get($port, '/buffer?op=free')->{content}, "ok\n", 'the buffer freed');

    # --- glibc: 32 MiB through FFI malloc ----------------------------------------------------

    my $g0 = status()->{breakdown}{glibc};
    is($t->get($port, '/malloc')->{content}, "ok\n", 'FFI malloc and memset 32 MiB');
    my ($j1) = both_depths('glibc holding 32 MiB');
    my $g1 = $j1->{breakdown}{glibc};
    # Less the module's own allocations, which differ by some KiB between two
    # answers (the kept chunk walks, the answer's buffers).
    cmp_ok($g1->{in_use_bytes} - $g0->{in_use_bytes}, '>=', 32 * $MiB - 64 * 1024, 'glibc in_use rose by 32 MiB');
    cmp_ok($g1->{bytes} - $g0->{bytes}, '>=', 32 * $MiB - 64 * 1024, 'glibc bytes rose by 32 MiB');
    cmp_ok($g1->{resident_bytes} - $g0->{resident_bytes}, '>=', 32 * $MiB, 'glibc resident rose by 32 MiB (its mmapped chunk found)');
    is($t->get($port, '/free')->{content}, "ok\n", 'free');
    my $g2 = status()->{breakdown}{glibc};
    cmp_ok(abs($g2->{in_use_bytes} - $g0->{in_use_bytes}), '<', 1 * $MiB, 'glibc in_use back where it was');

    # --- shm: a 16 MiB dict filled -------------------------------------------------------------

    like($t->get($port, '/fill')->{content}, qr/^\d+$/, 'dict filled');
    my ($j2, $full2) = both_depths('16 MiB dict filled');
    my $shm = $j2->{breakdown}{shm};
    cmp_ok($shm->{bytes}, '>', 15 * $MiB, "shm loaded about 16 MiB ($shm->{bytes})");
    my $rss = smaps_rss_of_size($worker, 16 * $MiB);
    cmp_ok(abs($shm->{bytes} - $rss), '<=', 0.02 * 16 * $MiB, "shm loaded within 2% of the mapping's smaps Rss ($rss)");
    cmp_ok(abs($shm->{resident_bytes} - proc_status_bytes($worker, 'RssShmem')), '<=', 64 * 1024,
        'shm resident = this worker\'s RssShmem');
    # Beside the dict: the module's own registry and history zones (pages this
    # worker wrote or read), at most their loaded bytes.
    my $ours = 0;
    $ours += $_->{loaded_bytes} for grep { ($_->{owner} // '') eq 'ngx_http_memory_status_module' } @{ $full2->{zones} };
    my $shm_full = $full2->{breakdown}{shm}{resident_bytes};
    cmp_ok($shm_full, '>=', $rss - 64 * 1024, "detail: shm resident ($shm_full) holds the dict's smaps Rss");
    cmp_ok($shm_full, '<=', $rss + $ours + 64 * 1024, "detail: and at most the module's own zones ($ours loaded) beside it");
}

# --- bad arguments --------------------------------------------------------------------------

my $bad = $t->get($port, '/memory_status?detail=yes');
is($bad->{status}, 400, 'detail=yes: 400');
like($bad->{content}, qr/^memory_status: bad value "yes" for argument "detail"/, 'detail=yes: reason names it');
is($t->get($port, '/memory_status?detail=full&zone=sixteen')->{status}, 400, 'detail with zone: 400');

$t->done_file;

# --- thread stacks with aio threads -------------------------------------------------------

{
    my $t = NginxTest->new;
    $t->write_standard_conf(main => 'thread_pool default threads=4;', http => 'aio threads;');
    $t->run;
    my ($w) = $t->worker_pids;
    my ($j) = $t->get_json($t->port(1), '/memory_status');
    my $s = $j->{breakdown}{stacks};
    # main, the pool's 4, and the module's measuring thread.
    is($s->{threads}, 6, 'aio threads: 6 threads');
    is($s->{threads}, proc_status_bytes($w, 'Threads'), 'threads = /proc Threads');
    is($s->{stacks_found}, 6, 'every thread\'s stack found');
    cmp_ok($s->{bytes}, '>=', 4 * 1024 * 1024, 'thread stacks are mapped');
    is(scalar(grep { $_->{thread} ne 'main' } @{ $s->{stacks} }), 5, 'five thread stacks listed');
    $t->done_file;
}

# --- jemalloc and tcmalloc, preloaded ---------------------------------------------------------

for my $case (['jemalloc', 'libjemalloc.so.2', 'stats.allocated'],
              ['tcmalloc', 'libtcmalloc_minimal.so.4', 'generic.current_allocated_bytes']) {
    my ($name, $lib, $stat) = @$case;
    my ($path) = grep { -f } map { "$_/$lib" } qw(/usr/lib/x86_64-linux-gnu /usr/lib);
    SKIP: {
        skip "$lib not installed", 4 unless $path;
        my $t = NginxTest->new;
        $t->write_standard_conf;
        $t->run(env => { LD_PRELOAD => $path });
        my ($j) = $t->get_json($t->port(1), '/memory_status');
        my $o = $j->{breakdown}{other_allocators};
        is($o->{name}, $name, "$name preloaded: detected");
        ok($o->{bytes} > 0, "$name: allocated bytes from its own stats");
        is($o->{bytes}, $o->{stats}{$stat}, "$name: bytes = $stat");
        is($o->{measure}, 'allocated', "$name: measure");
        $t->done_file;
    }
}

done_testing();
