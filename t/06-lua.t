#!/usr/bin/perl

# The Lua VMs: gc_bytes against Lua's own collectgarbage("count"), before and
# after 64 MiB, after freeing; the allocator's retained memory; version and JIT
# flag against Lua's jit module; and every load order, with and without Lua.

use warnings;
use strict;

use FindBin;
use lib "$FindBin::Bin/lib";

use JSON::PP qw(decode_json);
use Test::More;
use Time::HiRes ();
use NginxTest;
use MemoryStatus qw(check_base_shape unexpected_errors);

# Without Debian's Lua module only the case without it runs.
my $NO_LUA = "Debian's Lua module is not installed";

my $MiB = 1024 * 1024;

# $load: what is loaded, in order (standard_conf's load).
sub start {
    my ($load) = @_;
    my $t = NginxTest->new;
    $t->write_standard_conf(load => $load, server => 'include lua.conf;');
    $t->write_file('lua.conf', (grep { $_ eq 'lua' } @$load) ? <<'EOF' : '');
# Reads memory_status from inside Lua, bracketed by collectgarbage("count")
# with the collector stopped: the total only grows between the two readings.
location = /compare {
    content_by_lua_block {
        collectgarbage("stop")
        local before = collectgarbage("count") * 1024
        local res = ngx.location.capture("/memory_status")
        local after = collectgarbage("count") * 1024
        collectgarbage("restart")
        ngx.say(string.format("%.0f %.0f", before, after))
        ngx.print(res.body)
    }
}
# 64 MiB of distinct 1 KiB strings; every 16th is kept in `keep`.
location = /allocate {
    content_by_lua_block {
        big, keep = {}, {}
        local pad = string.rep("x", 1016)
        for i = 1, 65536 do
            local s = pad .. string.format("%08d", i)
            big[i] = s
            if i % 16 == 0 then keep[#keep + 1] = s end
        end
        ngx.say("ok")
    }
}
location = /free {
    content_by_lua_block {
        big = nil
        collectgarbage("collect")
        collectgarbage("collect")
        ngx.say("ok")
    }
}
location = /collect { content_by_lua_block { collectgarbage("collect"); collectgarbage("collect"); ngx.say("ok") } }
# 100,000 tables and 100,000 distinct strings, kept.
location = /objects {
    content_by_lua_block {
        tables, strings = {}, {}
        for i = 1, 100000 do
            tables[i] = {}
            strings[i] = "census-" .. i
        end
        ngx.say("ok")
    }
}
location = /jit {
    content_by_lua_block {
        if ngx.var.arg_set == "off" then jit.off() elseif ngx.var.arg_set == "on" then jit.on() end
        ngx.say(jit.version, "|", tostring(jit.status()))
    }
}
EOF
    $t->run;
    return $t;
}

# gc_bytes lies between Lua's readings just before and just after it.
sub compare {
    my ($t, $what) = @_;
    my $body = $t->get($t->port(1), '/compare')->{content};
    my ($before, $after, $json) = $body =~ /^(\d+) (\d+)\n(.*)\z/s or die "bad /compare: $body";
    my $j = decode_json($json);
    NginxTest::spool_answer($json);
    my $gc = $j->{lua}{http}{gc_bytes};
    my @unexpected = unexpected_errors($j);
    is(scalar @unexpected, 0, "$what: no source errors") or diag explain \@unexpected;
    cmp_ok($gc, '>=', $before, "$what: gc_bytes >= collectgarbage before ($before)");
    cmp_ok($gc, '<=', $after, "$what: gc_bytes <= collectgarbage after ($after)");
    cmp_ok(abs($gc - $before), '<=', 0.01 * $before, "$what: gc_bytes within 1% of collectgarbage");
    return $j;
}

SKIP: {
    skip $NO_LUA, 50 unless NginxTest::has_lua();
    for my $order (['lua', 'module'], ['module', 'lua']) {
        my $name = $order->[0] eq 'lua' ? 'lua first' : 'module first';
        my $t = start($order);
        my ($j) = $t->get_json($t->port(1), '/memory_status');
        check_base_shape($j, $name);
        my $vm = $j->{lua}{http};
        ok($vm, "$name: lua.http present");
        ok($vm->{gc_bytes} > 0, "$name: gc_bytes > 0");
        is($vm->{allocator}{kind}, 'luajit', "$name: LuaJIT's own allocator recognized");
        is($j->{lua}{stream}, undef, "$name: lua.stream null (no stream Lua module in Debian)");
        my ($stream_err) = grep { $_->{source} eq 'lua.stream' } @{ $j->{errors} };
        is($stream_err->{error}, 'ngx_stream_lua_module is not loaded', "$name: lua.stream reason");
        $t->done_file;
    }
}

SKIP: {
    skip $NO_LUA, 36 unless NginxTest::has_lua();
    my $t = start(['lua', 'module']);
    my $port = $t->port(1);

    my $j0 = compare($t, 'idle');
    my $a0 = $j0->{lua}{http}{allocator};

    # The worker also measures itself on its publishing timer: "afresh" means
    # measured after the change, by this answer or by that timer.
    my $t_alloc = Time::HiRes::time();
    is($t->get($port, '/allocate')->{content}, "ok\n", 'Lua allocated 64 MiB');
    my $j1 = compare($t, 'after 64 MiB');
    my $gc1 = $j1->{lua}{http}{gc_bytes};
    my $a1 = $j1->{lua}{http}{allocator};
    cmp_ok($gc1 - $j0->{lua}{http}{gc_bytes}, '>=', 64 * $MiB, 'gc_bytes rose by at least 64 MiB');
    cmp_ok($a1->{mapped_bytes} - $a0->{mapped_bytes}, '>=', 64 * $MiB, 'allocator mapped rose by at least 64 MiB');
    cmp_ok($a1->{resident_bytes}, '>=', 64 * $MiB, 'allocator resident holds the 64 MiB');
    cmp_ok($a1->{resident_age_ms}, '<=', (Time::HiRes::time() - $t_alloc) * 1000,
        'the grown heap is measured afresh');
    cmp_ok($a1->{free_bytes}, '<', 8 * $MiB, 'little of it is free while in use');

    my $t_free = Time::HiRes::time();
    is($t->get($port, '/free')->{content}, "ok\n", 'Lua freed 60 MiB and collected');
    my $j2 = compare($t, 'after free + collect');
    my $gc2 = $j2->{lua}{http}{gc_bytes};
    my $a2 = $j2->{lua}{http}{allocator};
    cmp_ok($gc2, '<', $gc1 - 48 * $MiB, "gc_bytes fell back ($gc2)");
    cmp_ok($a2->{mapped_bytes}, '>', $gc2 + 32 * $MiB,
        "the allocator keeps what the GC freed: mapped $a2->{mapped_bytes} > gc $gc2 + 32 MiB");
    cmp_ok($a2->{free_bytes}, '>', 32 * $MiB, "and says how much of it is free: $a2->{free_bytes}");
    cmp_ok($a2->{free_bytes}, '<=', $a2->{mapped_bytes}, 'free within mapped');
    is($a2->{walk_truncated}, JSON::PP::false, 'free-chunk walk complete');
    cmp_ok($a2->{resident_age_ms}, '<=', (Time::HiRes::time() - $t_free) * 1000,
        'the shrunk heap is measured afresh');
    # No Lua runs between two plain answers: the second reuses the first's
    # residency and says how old it is.
    my ($p1) = $t->get_json($port, '/memory_status');
    Time::HiRes::sleep(0.05);
    my ($p2) = $t->get_json($port, '/memory_status');
    my ($r1, $r2) = map { $_->{lua}{http}{allocator} } $p1, $p2;
    is($r2->{resident_bytes}, $r1->{resident_bytes}, 'an unchanged heap: the residency reused');
    cmp_ok($r2->{resident_age_ms}, '>=', 50, "and its age said ($r2->{resident_age_ms} ms)");
    cmp_ok($r2->{resident_age_ms}, '<', 10_000, 'never older than 10 s');
    diag sprintf 'after free: gc %.1f MiB, allocator mapped %.1f MiB, resident %.1f MiB, free %.1f MiB in %d chunks',
        $gc2 / $MiB, $a2->{mapped_bytes} / $MiB, $a2->{resident_bytes} / $MiB, $a2->{free_bytes} / $MiB, $a2->{free_chunks};

    # Version and JIT flag against Lua's own jit module.
    my ($version, $status) = split /\|/, $t->get($port, '/jit')->{content};
    chomp $status;
    is($j2->{lua}{http}{version}, $version, "version = jit.version ($version)");
    is($j2->{lua}{http}{jit_enabled} ? 'true' : 'false', $status, 'jit_enabled = jit.status()');
    like($t->get($port, '/jit?set=off')->{content}, qr/\|false$/, 'jit.off()');
    my ($off) = $t->get_json($port, '/memory_status');
    is($off->{lua}{http}{jit_enabled}, JSON::PP::false, 'jit_enabled false after jit.off()');
    like($t->get($port, '/jit?set=on')->{content}, qr/\|true$/, 'jit.on()');
    my ($on) = $t->get_json($port, '/memory_status');
    is($on->{lua}{http}{jit_enabled}, JSON::PP::true, 'jit_enabled true after jit.on()');
    like($on->{lua}{http}{library}, qr{/libluajit-5\.1\.so\.[\d.]+$}, 'library path');

    $t->done_file;
}

# The census of GC objects (lua_objects=1).
SKIP: {
    skip $NO_LUA, 22 unless NginxTest::has_lua();
    my $t = start(['lua', 'module']);
    my $port = $t->port(1);
    my ($plain) = $t->get_json($port, '/memory_status');
    ok(!exists $plain->{lua}{http}{objects}, 'no census unless asked for');
    # A full collection before each count: no garbage from earlier requests is
    # counted in one and freed before the other.
    $t->get($port, '/collect');
    my ($j0) = $t->get_json($port, '/memory_status?lua_objects=1');
    my $o0 = $j0->{lua}{http}{objects};
    ok($o0, 'lua_objects=1: the census is there');
    is($o0->{truncated}, JSON::PP::false, 'not truncated');
    is(scalar keys %{ $o0->{types} }, 9, 'nine object types');
    cmp_ok($o0->{types}{function}{count}, '>', 0, 'functions counted');
    cmp_ok($o0->{bytes}, '<=', $j0->{lua}{http}{gc_bytes}, 'census bytes within gc_bytes');
    # What is left is the VM's own state (global_State, the JIT's buffers): the
    # same few tens of KiB on an idle and on a grown heap.
    my $rest0 = $j0->{lua}{http}{gc_bytes} - $o0->{bytes} - $o0->{string_table_bytes};
    diag "census: objects $o0->{bytes} + string table $o0->{string_table_bytes}, gc_bytes $j0->{lua}{http}{gc_bytes}: VM state $rest0";
    cmp_ok($o0->{string_table_bytes}, '>=', 8 * 256, 'the string table: at least its minimum 256 buckets');
    cmp_ok($o0->{bytes} + $o0->{string_table_bytes}, '>=', 0.8 * $j0->{lua}{http}{gc_bytes},
        "objects and string table account for most of gc_bytes $j0->{lua}{http}{gc_bytes}");
    is($t->get($port, '/objects')->{content}, "ok\n", 'Lua made 100,000 tables and 100,000 strings');
    $t->get($port, '/collect');
    my ($j1) = $t->get_json($port, '/memory_status?lua_objects=1');
    my $o1 = $j1->{lua}{http}{objects};
    cmp_ok($o1->{types}{table}{count} - $o0->{types}{table}{count}, '>=', 100000, 'tables rose by 100,000');
    cmp_ok($o1->{types}{string}{count} - $o0->{types}{string}{count}, '>=', 100000, 'strings rose by 100,000');
    cmp_ok($o1->{types}{table}{bytes} - $o0->{types}{table}{bytes}, '>=', 100000 * 64, 'table bytes rose by 100,000 tables');
    cmp_ok(abs($o1->{bytes} - $j1->{lua}{http}{gc_bytes}), '<=', 0.1 * $j1->{lua}{http}{gc_bytes},
        'census bytes within 10% of gc_bytes');
    my $rest1 = $j1->{lua}{http}{gc_bytes} - $o1->{bytes} - $o1->{string_table_bytes};
    cmp_ok(abs($rest1 - $rest0), '<=', 64 * 1024, "the VM's own state ($rest1) did not grow with the heap");
    cmp_ok($o1->{string_table_bytes}, '>=', 8 * 100000 / 2, 'the string table grew with 100,000 strings');
    diag "census: $o1->{walked} objects in $o1->{elapsed_us} us";
    my ($cut) = $t->get_json($port, '/memory_status?lua_objects=1&lua_objects_limit=1000');
    is($cut->{lua}{http}{objects}{truncated}, JSON::PP::true, 'the cap works: truncated');
    is($cut->{lua}{http}{objects}{walked}, 1000, 'walked exactly the cap');
    my ($after) = $t->get_json($port, '/memory_status');
    cmp_ok(abs($after->{lua}{http}{gc_bytes} - $j1->{lua}{http}{gc_bytes}), '<', 64 * 1024,
        'the census allocated nothing in the VM');
    is($t->get($port, '/memory_status?lua_objects=2')->{status}, 400, 'lua_objects=2: 400');
    like($t->get($port, '/memory_status?lua_objects=1&format=prometheus')->{content},
        qr/^nginx_memory_lua_objects\{pid="\d+",worker="0",vm="http",type="table"\} \d+$/m, 'census in Prometheus');
    like($t->get($port, '/memory_status?lua_objects=1&format=html')->{content}, qr/GC objects of the http VM/, 'census in HTML');
    $t->done_file;
}

# Without the Lua module: null with the reason, the rest answers.
{
    my $t = start(['module']);
    my ($j, $res) = $t->get_json($t->port(1), '/memory_status');
    is($res->{status}, 200, 'no Lua: 200');
    check_base_shape($j, 'no Lua');
    is($j->{lua}{http}, undef, 'no Lua: lua.http null');
    my ($err) = grep { $_->{source} eq 'lua.http' } @{ $j->{errors} };
    is($err->{error}, 'ngx_http_lua_module is not loaded', 'no Lua: the reason');
    $t->done_file;
}

done_testing();
