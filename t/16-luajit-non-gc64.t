#!/usr/bin/perl

# LuaJIT built without GC64 (-DLUAJIT_DISABLE_GC64: 32-bit GC references, what
# OpenResty shipped on x86_64 before 2.1-2023), loaded by the Lua module in place
# of the GC64 library through LD_LIBRARY_PATH. What reads the same on both
# layouts (gc_bytes, the allocator) is checked against Lua's own numbers; what
# reads global_State's fields (jit_enabled, the census) is null with a reason
# in errors, and nothing else is disturbed. scripts/test builds that LuaJIT on
# the platform matrix and sets TEST_LUAJIT_NON_GC64_LIB.

use warnings;
use strict;

use FindBin;
use lib "$FindBin::Bin/lib";

use Test::More;
use NginxTest;
use MemoryStatus qw(check_base_shape resident_sum unexpected_errors);

my $LIB = $ENV{TEST_LUAJIT_NON_GC64_LIB};
plan skip_all => 'TEST_LUAJIT_NON_GC64_LIB is not set (the platform matrix of scripts/test builds that LuaJIT)'
    unless $LIB;
plan skip_all => 'no Lua module in this build' unless NginxTest::has_lua();
die "$LIB/libluajit-5.1.so.2 missing\n" unless -f "$LIB/libluajit-5.1.so.2";

my $MiB = 1024 * 1024;
local $ENV{LD_LIBRARY_PATH} = $LIB;

my $t = NginxTest->new;
$t->write_file_expand('nginx.conf', <<'EOF');
%%LOAD_LUA%%
%%LOAD_MODULE%%
%%TEST_GLOBALS%%
worker_processes 1;
events { worker_connections 128; }
http {
    %%TEST_GLOBALS_HTTP%%
    server {
        listen 127.0.0.1:%%PORT_1%%;
        location = /memory_status { memory_status; }
        location = /abi {
            content_by_lua_block { ngx.say(require("ffi").abi("gc64") and "gc64" or "non-gc64") }
        }
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
        # 1 KiB strings until the allocator maps 1.6 GB, or LuaJIT says no.
        location = /near_limit {
            content_by_lua_block {
                huge = {}
                local pad = string.rep("h", 1000)
                local ok, err = pcall(function()
                    for i = 1, 1600000 do huge[i] = pad .. string.format("%010d", i) end
                end)
                ngx.say(ok and "ok" or tostring(err))
            }
        }
        location = /release {
            content_by_lua_block { huge = nil; collectgarbage("collect"); collectgarbage("collect"); ngx.say("ok") }
        }
        location = /allocate {
            content_by_lua_block {
                big = {}
                local pad = string.rep("x", 1016)
                for i = 1, 65536 do big[i] = pad .. string.format("%08d", i) end
                ngx.say("ok")
            }
        }
    }
}
EOF
$t->run;
my $port = $t->port(1);
is($t->get($port, '/abi')->{content}, "non-gc64\n", 'the worker runs the non-GC64 LuaJIT');
my ($j) = $t->get_json($port, '/memory_status');
check_base_shape_but_lua($j);
my $vm = $j->{lua}{http};
ok($vm, 'lua.http present');
like($vm->{library} // '', qr/^\Q$LIB\E\/libluajit-5\.1\.so/, 'the library is the non-GC64 one');
is($vm->{allocator}{kind}, 'luajit', "LuaJIT's own allocator recognized");
cmp_ok($vm->{allocator}{mapped_bytes}, '>', 0, 'allocator segments read');
is($vm->{jit_enabled}, undef, 'jit_enabled: null (global_State layout differs)');
my ($jit_err) = grep { $_->{source} eq 'lua.http.jit' } @{ $j->{errors} };
like($jit_err->{error} // '', qr/^unrecognized lua_State layout \(not LuaJIT 2\.1 GC64\)$/, 'jit_enabled: the reason') or diag explain $j->{errors};
is(resident_sum($j), $j->{process}{resident_bytes}, 'owners + unattributed = RSS');

for my $what ('idle', 'after 64 MiB of strings') {
    if ($what ne 'idle') {
        is($t->get($port, '/allocate')->{content}, "ok\n", 'Lua allocated 64 MiB');
    }
    my $body = $t->get($port, '/compare')->{content};
    my ($before, $json) = $body =~ /^(\d+)\n(.*)\z/s or die "bad /compare: $body";
    my $c = JSON::PP::decode_json($json);
    NginxTest::spool_answer($json);
    cmp_ok($c->{lua}{http}{gc_bytes}, '>=', $before, "$what: gc_bytes >= collectgarbage ($before)");
    cmp_ok(abs($c->{lua}{http}{gc_bytes} - $before), '<=', 0.01 * $before, "$what: gc_bytes within 1% of collectgarbage");
    if ($what ne 'idle') {
        cmp_ok($c->{breakdown}{lua_http}{resident_bytes}, '>=', 64 * $MiB, "$what: lua_http resident holds the 64 MiB");
    }
}

# The non-GC64 heap near its 2 GiB limit: lua_heap_limit, critical.
{
    my ($before) = $t->get_json($port, '/memory_status');
    ok(!grep({ $_->{code} eq 'lua_heap_limit' } @{ $before->{findings} }), 'lua_heap_limit: not with 64 MiB');
    chomp(my $said = $t->get($port, '/near_limit')->{content});
    my ($j) = $t->get_json($port, '/memory_status');
    my $mapped = $j->{lua}{http}{allocator}{mapped_bytes};
    diag "near the limit: Lua said \"$said\" with the allocator mapping $mapped bytes";
    cmp_ok($mapped, '>=', 0.75 * 2048 * $MiB, "the allocator maps $mapped bytes, 75% of 2 GiB or more");
    my ($f) = grep { $_->{code} eq 'lua_heap_limit' } @{ $j->{findings} };
    ok($f, 'lua_heap_limit fires') or diag explain $j->{findings};
    is($f->{severity}, 'critical', 'critical');
    is($f->{evidence}{allocator_mapped_bytes}, $mapped, 'its evidence: the allocator\'s mapped bytes');
    is($f->{evidence}{limit_bytes}, 2048 * $MiB, 'against the 2 GiB a non-GC64 LuaJIT addresses');
    $t->get($port, '/release');
}

my ($census) = $t->get_json($port, '/memory_status?lua_objects=1');
ok(!defined $census->{lua}{http}{objects}, 'census: null');
my ($census_err) = grep { $_->{source} eq 'lua.http.objects' } @{ $census->{errors} };
like($census_err->{error} // '', qr/unrecognized/, 'census: the reason') or diag explain $census->{errors};
is($census->{lua}{http}{gc_bytes} > 0 ? 1 : 0, 1, 'the rest of lua.http still answers');

$t->done_file;
done_testing;

# The base shape, where the only errors are the two the layout explains.
sub check_base_shape_but_lua {
    my ($j) = @_;
    my @other = grep { $_->{source} ne 'lua.http.jit' } unexpected_errors($j);
    is(scalar @other, 0, 'no errors but the JIT flag and absent modules') or diag explain \@other;
    local $j->{errors} = [];
    check_base_shape($j, 'non-GC64');
}
