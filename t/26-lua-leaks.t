#!/usr/bin/perl

# Which Lua table is leaking (?lua_largest=1): known leaks, each found by its
# path from the roots (also a request's ngx.ctx and a light thread's local
# while the request is in flight, and cdata by their finalizer), its size within 10% of the bytes the test put there
# (collectgarbage("count") after a full collection, before and after each
# insertion), and
# the growth between two looks within 10% of what the test added between
# them. On the LuaJIT the Lua module loads (GC64 on Debian and the matrix),
# and again on the non-GC64 build when the matrix provides it. The walk runs
# in a forked child: no zombie is left, nginx logs nothing of it, and a
# request without the thread gets a reason instead of a walk on the loop.

use warnings;
use strict;

use FindBin;
use lib "$FindBin::Bin/lib";

use IO::Socket::INET;
use Test::More;
use NginxTest;
use MemoryStatus qw(unexpected_errors);

plan skip_all => 'no Lua module in this build' unless NginxTest::has_lua();

my @runs = (['the Lua module\'s LuaJIT', undef]);
push @runs, ['the non-GC64 LuaJIT', $ENV{TEST_LUAJIT_NON_GC64_LIB}] if $ENV{TEST_LUAJIT_NON_GC64_LIB};

for my $run (@runs) {
    my ($label, $lib) = @$run;
    local $ENV{LD_LIBRARY_PATH} = $lib if $lib;
    leaks($label);
}
history_by_kind();
stall_bound();
lifecycle();

done_testing;

sub within {
    my ($got, $want, $what) = @_;
    my $ok = cmp_ok(abs(($got // 0) - $want), '<=', 0.10 * $want, "$what: $got within 10% of $want");
    return $ok;
}

sub find_object {
    my ($list, $re) = @_;
    my ($o) = grep { $_->{path} =~ $re } @{ $list // [] };
    return $o;
}

sub leaks {
    my ($label) = @_;
    my $t = NginxTest->new;
    my $prefix = $t->prefix;
    $t->write_file('lua/app/cache.lua', <<'EOF');
local M = {}
local cache = {}
function M.put(k, v)
    cache[k] = v
end
return M
EOF
    $t->write_file('lua/app/lru.lua', <<'EOF');
local lrucache = require "resty.lrucache"
local M = {}
local lru = lrucache.new(100)
function M.set(k, v)
    lru:set(k, v)
end
return M
EOF
    $t->write_file_expand('nginx.conf', <<EOF);
%%LOAD_LUA%%
%%LOAD_MODULE%%
%%TEST_GLOBALS%%
worker_processes 1;
events { worker_connections 128; }
http {
    %%TEST_GLOBALS_HTTP%%
    lua_package_path "$prefix/lua/?.lua;;";
    # 300,000 strings kept: LuaJIT's string table (counted by
    # collectgarbage, no object a walk reaches) then does not double while
    # the test adds its 64,000.
    # require counts its calls in a dict: the walk's child runs none of
    # the application's code.
    lua_shared_dict counts 1m;
    init_by_lua_block {
        require "app.cache"
        pad = {}
        for i = 1, 300000 do pad[i] = "p" .. i end
        local plain_require = require
        require = function(...)
            local d = ngx.shared.counts
            if d then d:incr("require_calls", 1, 0) end
            return plain_require(...)
        end
    }
    server {
        listen 127.0.0.1:%%PORT_1%%;
        location = /memory_status { memory_status; }
        location = /abi {
            content_by_lua_block { ngx.say(require("ffi").abi("gc64") and "gc64" or "non-gc64") }
        }
        # Each leak adds what the argument says and answers the bytes the
        # live heap grew by: collectgarbage("count") after a full collection,
        # before and after (the garbage made on the way is not counted).
        location = /leak {
            content_by_lua_block {
                local what, n = ngx.var.arg_what, tonumber(ngx.var.arg_n)
                seq = (seq or 0)
                collectgarbage("collect")
                local before = collectgarbage("count")
                if what == "global" then
                    blocks = blocks or {}
                    for i = 1, n do
                        seq = seq + 1
                        blocks[#blocks + 1] = string.rep("g", 992) .. string.format("%08d", seq)
                    end
                elseif what == "upvalue" then
                    local c = require "app.cache"
                    for i = 1, n do
                        seq = seq + 1
                        c.put("key" .. seq, string.rep("u", 496) .. string.format("%08d", seq))
                    end
                elseif what == "by_id" then
                    by_id = by_id or {}
                    for i = 1, n do
                        seq = seq + 1
                        by_id[string.format("%032x", seq)] = true
                    end
                elseif what == "cdata" then
                    local ffi = require "ffi"
                    buffers = buffers or {}
                    buffers[#buffers + 1] = ffi.gc(ffi.new("char[?]", n), function() end)
                elseif what == "malloc" then
                    local ffi = require "ffi"
                    pcall(ffi.cdef, "void *malloc(size_t); void free(void *);")
                    held = held or {}
                    for i = 1, n do held[#held + 1] = ffi.gc(ffi.C.malloc(64), ffi.C.free) end
                    -- Two C pointers of no symbol, and a callable table.
                    for _, p in ipairs({ 0x1234, 0x5678 }) do
                        held[#held + 1] = ffi.gc(ffi.new("char[?]", 100), ffi.cast("void (*)(void *)", p))
                    end
                    local callable = setmetatable({}, { __call = function() end })
                    for i = 1, 30 do held[#held + 1] = ffi.gc(ffi.new("char[?]", 32), callable) end
                elseif what == "finalizers" then
                    -- n finalizers of distinct code.
                    local ffi = require "ffi"
                    odd = odd or {}
                    for i = 1, n do
                        local f = loadstring("return function(p) local x = " .. i .. " end", "=gen" .. i)()
                        odd[#odd + 1] = ffi.gc(ffi.new("char[?]", 100), f)
                    end
                end
                collectgarbage("collect")
                local after = collectgarbage("count")
                ngx.say(string.format("%.0f", (after - before) * 1024))
            }
        }
        # 100 values of 10,000 bytes in an lrucache of 100 items (from a
        # module): the bytes of the values it holds at the end.
        location = /lru {
            content_by_lua_block {
                local m = require "app.lru"
                for i = 1, 300 do
                    m.set("k" .. i, string.rep("l", 9992) .. string.format("%08d", i))
                end
                ngx.say(100 * (24 + 10004))
            }
        }
        # Shapes that once broke a walk: a long key of two-byte characters,
        # two tables under one path (table keys), a quote in a key.
        location = /odd {
            content_by_lua_block {
                utf = {}
                utf["a" .. string.rep("\\195\\169", 700)] = {string.rep("x", 100000)}
                dups = {}
                dups[{}] = {string.rep("y", 200000)}
                dups[{}] = {string.rep("z", 300000)}
                quoted = {}
                quoted['a"b'] = {string.rep("q", 50000)}
                -- Values only a weak table holds (kept until the walk: the
                -- collector stopped), beside the same held strongly.
                collectgarbage("stop")
                weak = setmetatable({}, {__mode = "v"})
                for i = 1, 30 do weak[i] = {string.rep("w", 20000) .. i} end
                strong = {}
                for i = 1, 30 do strong[i] = {string.rep("s", 20000) .. i} end
                ngx.say("ok")
            }
        }
        location = /gc_restart { content_by_lua_block { collectgarbage("restart") ngx.say("ok") } }
        location = /require_calls {
            content_by_lua_block { ngx.say(ngx.shared.counts:get("require_calls") or 0) }
        }
        # ngx.ctx of a request, held by a timer's closure after it ends.
        location = /ctx {
            content_by_lua_block {
                local ctx = ngx.ctx
                ctx.payload = string.rep("x", 99992) .. string.format("%08d", ngx.now() * 1000 % 1e8)
                local ok, err = ngx.timer.at(3600, function() return ctx end)
                ngx.say(ok and "ok" or err)
            }
        }
        # A request in flight: its ngx.ctx, and a light thread's local.
        location = /inflight {
            content_by_lua_block {
                ngx.ctx.inflight = string.rep("i", 199992) .. string.format("%08d", ngx.now() * 1000 % 1e8)
                local th = ngx.thread.spawn(function()
                    local spawned = { string.rep("t", 299992) .. string.format("%08d", ngx.now() * 1000 % 1e8) }
                    ngx.sleep(5)
                    return #spawned
                end)
                ngx.sleep(5)
                ngx.say(select(2, ngx.thread.wait(th)))
            }
        }
    }
}
EOF
    $t->run;
    my $port = $t->port(1);
    chomp(my $abi = $t->get($port, '/abi')->{content});
    diag "$label: $abi";
    my $put = sub {
        my ($what, $n) = @_;
        my $body = $t->get($port, "/leak?what=$what&n=$n")->{content};
        $body =~ /^(\d+)$/ or die "bad /leak answer: $body";
        return $1;
    };

    my $global = $put->('global', 10000);
    my $upvalue = $put->('upvalue', 10000);
    my $by_id = $put->('by_id', 20000);
    my $cdata = $put->('cdata', 2_000_000);
    $put->('malloc', 1000);
    chomp(my $lru = $t->get($port, '/lru')->{content});
    is($t->get($port, '/ctx')->{content}, "ok\n", "$label: a timer holds a request's ngx.ctx");

    my ($j) = $t->get_json($port, '/memory_status?lua_largest=1');
    my $l = $j->{lua}{http}{largest};
    ok($l, "$label: lua.http.largest is there") or diag explain $j->{errors};
    # (On the non-GC64 LuaJIT the JIT flag is null with its reason: t/16.)
    my @errors = grep { $_->{source} ne 'lua.http.jit' } unexpected_errors($j);
    is(scalar(@errors), 0, "$label: no error") or diag explain \@errors;
    ok(!$l->{truncated}, "$label: the walk is whole");
    cmp_ok($l->{walked}, '>', 340000, "$label: it reached $l->{walked} objects");
    diag sprintf '%s: walked %d objects in %d us, the fork held the loop %d us', $label, $l->{walked}, $l->{elapsed_us}, $l->{fork_us};
    is($j->{lua}{http}{growth}, undef, "$label: no growth at the worker's first walk");

    my $o = find_object($l->{tables}, qr/^_G\.blocks$/);
    ok($o, "$label: a global table growing per request: _G.blocks") or diag explain [map { $_->{path} } @{ $l->{tables} }];
    within($o->{retained_bytes}, $global, "$label: _G.blocks retained");
    is($o->{entries}, 10000, "$label: _G.blocks has its 10000 entries");

    $o = find_object($l->{tables}, qr/^package\.loaded\["app\.cache"\]\.put > upvalue "cache" of function at \Q$prefix\E\/lua\/app\/cache\.lua:3$/);
    ok($o, "$label: an upvalue-held cache of a module required from init_by_lua, by its upvalue and function")
        or diag explain [map { $_->{path} } @{ $l->{tables} }];
    within($o->{retained_bytes}, $upvalue, "$label: the upvalue cache retained");

    $o = find_object($l->{tables}, qr/^_G\.by_id$/);
    ok($o, "$label: strings interned as keys by request id: _G.by_id");
    within($o->{retained_bytes}, $by_id, "$label: _G.by_id retained (its keys)");

    $o = find_object($l->{cdata}, qr/^_G\.buffers\[1\]$/);
    ok($o, "$label: cdata with a finalizer that never runs: _G.buffers[1]") or diag explain $l->{cdata};
    within($o->{own_bytes}, $cdata, "$label: the cdata's bytes");
    my ($f) = grep { $_->{finalizer} =~ /^function at content_by_lua\(nginx\.conf:\d+\):\d+$/ } @{ $l->{cdata_finalizers} };
    ok($f, "$label: cdata by finalizer: the Lua function by its chunk and line") or diag explain $l->{cdata_finalizers};
    is($f->{count}, 1, "$label: that finalizer has its one cdata");
    within($f->{bytes}, $cdata, "$label: that finalizer's cdata bytes");
    # dladdr names glibc's free by one of its aliases.
    ($f) = grep { $_->{finalizer} =~ /^(?:__libc_)?c?free$/ } @{ $l->{cdata_finalizers} };
    ok($f, "$label: cdata by finalizer: ffi.C.free by its symbol (" . ($f ? $f->{finalizer} : "none") . ")") or diag explain $l->{cdata_finalizers};
    is_deeply([$f->{count}, $f->{reached}], [1000, 1000], "$label: free has its 1000 cdata, all reached from the roots");
    my @c = grep { $_->{finalizer} eq 'a C function' } @{ $l->{cdata_finalizers} };
    is(scalar @c, 1, "$label: C functions of no symbol are one group") or diag explain $l->{cdata_finalizers};
    is($c[0] && $c[0]{count}, 2, "$label: with both their cdata");
    my ($callable) = grep { $_->{finalizer} eq 'a table' } @{ $l->{cdata_finalizers} };
    is($callable && $callable->{count}, 30, "$label: a callable table's cdata are counted") or diag explain $l->{cdata_finalizers};

    $o = find_object($l->{tables}, qr/^package\.loaded\["app\.lru"\]\.set > upvalue "lru" of function at \Q$prefix\E\/lua\/app\/lru\.lua:4$/);
    ok($o, "$label: an lrucache instance past its intended size, by its upvalue")
        or diag explain [map { $_->{path} } @{ $l->{tables} }];
    within($o->{retained_bytes}, $lru, "$label: the lrucache retained");

    $o = find_object($l->{tables}, qr/^registry\[ngx_http_lua_coroutines_key\]\[\d+\] > .*upvalue "ctx" of function at /);
    ok($o, "$label: ngx.ctx held by a timer, through the timer's coroutine")
        or diag explain [map { $_->{path} } @{ $l->{tables} }];
    within($o->{retained_bytes}, 100_000 + 24 + 64 + 32, "$label: that ngx.ctx retained");

    my ($s) = @{ $l->{strings} };
    cmp_ok($s->{own_bytes}, '>=', 100_000, "$label: the largest string is the ctx payload's");

    # What grows between two looks.
    my $more = $put->('global', 5000);
    my $more_cache = $put->('upvalue', 3000);
    my ($j2) = $t->get_json($port, '/memory_status?lua_largest=1');
    my $g = $j2->{lua}{http}{growth};
    ok($g, "$label: growth at the second walk") or diag explain $j2->{errors};
    cmp_ok($g->{age_ms}, '>', 0, "$label: its age, $g->{age_ms} ms");
    my ($grown) = grep { $_->{path} eq '_G.blocks' } @{ $g->{paths} };
    ok($grown, "$label: _G.blocks grew") or diag explain $g->{paths};
    within($grown->{retained_bytes}, $more, "$label: _G.blocks grew by what was added");
    is($grown->{entries}, 5000, "$label: by 5000 entries");
    ($grown) = grep { $_->{path} =~ /upvalue "cache"/ } @{ $g->{paths} };
    ok($grown, "$label: the upvalue cache grew");
    within($grown->{retained_bytes}, $more_cache, "$label: the upvalue cache grew by what was added");
    is($g->{paths}[0]{path}, '_G.blocks', "$label: the deepest path leads, not _G");
    cmp_ok($g->{types}{string}{count}, '>=', 5000 + 6000, "$label: strings grew by the new ones");

    # Prometheus: the largest by path, bounded; what grew since the last walk.
    my $third = $put->('global', 2000);
    my $prom = $t->get($port, '/memory_status?lua_largest=1&format=prometheus')->{content};
    my ($blocks) = $prom =~ /^nginx_memory_lua_largest_retained_bytes\{[^}]*vm="http",kind="table",path="_G\.blocks"\} (\d+)$/m;
    within($blocks, $global + $more + $third, "$label: Prometheus: _G.blocks retained");
    my ($grew) = $prom =~ /^nginx_memory_lua_growth_retained_bytes\{[^}]*vm="http",kind="table",path="_G\.blocks"\} (-?\d+)$/m;
    within($grew, $third, "$label: Prometheus: _G.blocks grew by what was added");
    my $series = () = $prom =~ /^nginx_memory_lua_largest_retained_bytes\{/mg;
    cmp_ok($series, '<=', 35, "$label: Prometheus: $series largest-object series, bounded");
    like($prom, qr/^nginx_memory_lua_walk_fork_seconds\{[^}]*vm="http"\} [0-9.e-]+$/m, "$label: Prometheus: the fork's stall");
    like($prom, qr/^nginx_memory_lua_walk_objects\{[^}]*vm="http",kind="table"\} \d+$/m, "$label: Prometheus: objects by kind");

    # HTML: the tables of the largest and of what grew.
    $put->('global', 1000);
    my $html = $t->get($port, '/memory_status?lua_largest=1&format=html')->{content};
    like($html, qr{<h3>Largest Lua objects of the http VM</h3>.*<td>table</td><td>_G\.blocks</td>}s, "$label: HTML: the largest objects, by path");
    like($html, qr{<h3>What grew in the http VM in \d+ s</h3>.*<td>_G\.blocks</td><td class="num">\+}s, "$label: HTML: what grew");
    like($html, qr{<h3>cdata by finalizer</h3>.*<td>(?:__libc_)?c?free</td><td class="num">1000</td>}s, "$label: HTML: cdata by finalizer");

    # Shapes that once broke a walk, the application's code never run.
    is($t->get($port, '/odd')->{content}, "ok\n", "$label: odd shapes made");
    # (Its bytes are not asked: the collection on the way frees earlier garbage.)
    $t->get($port, '/leak?what=finalizers&n=300');
    my $calls = $t->get($port, '/require_calls')->{content};
    my ($odd) = $t->get_json($port, '/memory_status?lua_largest=1');
    my $ol = $odd->{lua}{http}{largest};
    ok($ol, "$label: a long key of two-byte characters walks") or diag explain $odd->{errors};
    my ($long) = grep { $_->{path} =~ /^_G\.utf\["a(?:\x{e9})+(?:\\xc3)?\.\.\."\]\[1\]$/ } @{ $ol->{strings} };
    ok($long, "$label: its key shown cut at 64 bytes") or diag explain [map { $_->{path} } @{ $ol->{strings} }];
    ok((grep { $_->{path} eq '_G.quoted["a\\x22b"][1]' } @{ $ol->{strings} }), "$label: a quote in a key reads as \\x22")
        or diag explain [map { $_->{path} } @{ $ol->{strings} }];
    is($t->get($port, '/require_calls')->{content}, $calls, "$label: the walk ran no require of the application's");
    ok((grep { $_->{path} =~ /^_G\.strong\[\d+\]\[1\]$/ } @{ $ol->{strings} }), "$label: strings held strongly are listed");
    my $odd_finalizers = $ol->{cdata_finalizers};
    my ($other) = grep { $_->{finalizer} eq 'other finalizers (past the first 256)' } @{ $odd_finalizers // [] };
    ok($other && $other->{count} > 0, "$label: finalizers past the first 256 count together") or diag explain $odd_finalizers;
    ok(!grep({ $_->{path} =~ /^_G\.weak\[/ } @{ $ol->{strings} }), "$label: those only a weak table holds are not")
        or diag explain [map { $_->{path} } @{ $ol->{strings} }];
    $t->get($port, '/gc_restart');
    my ($again) = $t->get_json($port, '/memory_status?lua_largest=1');
    ok(!grep({ $_->{path} =~ /\[a table key\]/ } @{ $again->{lua}{http}{growth}{paths} }), "$label: a path two objects share is no growth");
    $prom = $t->get($port, '/memory_status?lua_largest=1&format=prometheus')->{content};
    my %seen;
    my @twice = grep { $seen{$_}++ } $prom =~ /^(nginx_memory_lua_\w+\{[^}]*\}) /mg;
    is(scalar @twice, 0, "$label: Prometheus: no series twice") or diag explain \@twice;
    like($t->get($port, '/memory_status?lua_largest=1&format=text')->{content}, qr/^Largest Lua tables \(http VM, \d+ objects reached\)\n(  .*\n)*  +\S+ \S+  _G\.pad$/m,
        "$label: text: the largest tables");

    # A request in flight, asleep: its ngx.ctx and its light thread's local.
    my $inflight = NginxTest::send_request($port, '/inflight');
    select undef, undef, undef, 0.5;
    my ($fl) = $t->get_json($port, '/memory_status?lua_largest=1');
    my $tables = $fl->{lua}{http}{largest}{tables};
    my $o = find_object($tables, qr/^registry(?:\.ngx_lua_ctx_tables|\[ngx_http_lua_ctx_tables_key\])\[\d+\]$/);
    ok($o, "$label: the ngx.ctx of a request in flight, by its ctx table") or diag explain [map { $_->{path} } @{ $tables // [] }];
    within($o->{retained_bytes}, 200_000, "$label: that ngx.ctx retained");
    $o = find_object($tables, qr/^registry\[ngx_http_lua_coroutines_key\]\[\d+\] > local "spawned" of function at content_by_lua\(nginx\.conf:\d+\):3$/);
    ok($o, "$label: a light thread's local, by its coroutine and name") or diag explain [map { $_->{path} } @{ $tables // [] }];
    within($o->{retained_bytes}, 300_000, "$label: that local retained");
    NginxTest::read_reply($inflight);

    # Bad input, and walks asked together.
    is($t->get($port, '/memory_status?lua_largest=2')->{status}, 400, "$label: lua_largest=2 is refused");
    is($t->get($port, '/memory_status?lua_largest=1&zone=x')->{status}, 400, "$label: lua_largest=1 with zone= is refused");
    my @socks = map { NginxTest::send_request($port, '/memory_status?lua_largest=1') } 1 .. 4;
    my @answers = map { [NginxTest::read_reply($_)] } @socks;
    is(scalar(grep { $_->[0] eq '200' && $_->[1] =~ /"largest":\{"walked":\d+/ } @answers), 4, "$label: four walks asked at once all answer");
    my %walks = map { $_->[1] =~ /"largest":\{"walked":\d+,"truncated":\w+,"elapsed_us":(\d+),"fork_us":(\d+)/ ? ("$1/$2" => 1) : () } @answers;
    is(scalar(keys %walks), 1, "$label: the three that came while the first walked joined its walk");

    # No child is left, nginx said nothing of it.
    my ($worker) = $t->worker_pids;
    my @children = grep { (NginxTest::parent_of($_) // 0) == $worker } map { m{^/proc/(\d+)$} ? $1 : () } glob '/proc/[0-9]*';
    is(scalar @children, 0, "$label: no child of the worker is left");
    unlike($t->error_log, qr/unknown process|\[alert\]|\[crit\]/, "$label: no alert, no unknown process in error.log");
    $t->stop;
}

# memory_status_lua_walk_history on: each history sample walks the heap and
# keeps its bytes by kind, so a trend and steady_growth name the kind that
# grows (strings here, added by a timer at a known rate).
sub history_by_kind {
    my $t = NginxTest->new;
    $t->write_file_expand('nginx.conf', <<'EOF');
%%LOAD_LUA%%
%%LOAD_MODULE%%
%%TEST_GLOBALS%%
worker_processes 1;
events { worker_connections 128; }
http {
    %%TEST_GLOBALS_HTTP%%
    memory_status_interval 1s;
    memory_status_lua_walk_history on;
    init_worker_by_lua_block {
        grown, started = {}, ngx.now()
        ngx.timer.every(0.25, function()
            for i = 1, 256 do
                grown[#grown + 1] = string.rep("s", 992) .. string.format("%08d", #grown)
            end
        end)
    }
    server {
        listen 127.0.0.1:%%PORT_1%%;
        location = /memory_status { memory_status; }
        # Strings added so far and over how many seconds.
        location = /grown { content_by_lua_block { ngx.say(#grown, " ", ngx.now() - started) } }
    }
}
EOF
    $t->run;
    my $port = $t->port(1);
    sleep 9;
    my ($count, $seconds) = split ' ', $t->get($port, '/grown')->{content};
    my $rate = $count * 1028 / $seconds * 3600;
    my ($j) = $t->get_json($port, '/memory_status?history=1');
    my ($worker) = $t->worker_pids;
    my ($p) = grep { $_->{pid} == $worker } @{ $j->{trends} };
    my ($strings) = grep { $_->{series} eq 'lua_http_string' } @{ $p->{trends} // [] };
    ok($strings, 'history by kind: a trend of the http VM\'s strings') or diag explain $p;
    cmp_ok(abs(($strings->{bytes_per_hour} // 0) - $rate), '<=', 0.2 * $rate,
        "history by kind: strings grow " . ($strings->{bytes_per_hour} // 0) . " bytes per hour, within 20% of the timer's $rate");
    my ($finding) = grep { $_->{code} eq 'steady_growth' && $_->{subject} =~ / lua_http_string$/ } @{ $j->{findings} };
    ok($finding, 'history by kind: steady_growth names the strings') or diag explain $j->{findings};
    my ($h) = grep { $_->{pid} == $worker } @{ $j->{history}{processes} };
    my @by_kind = grep { $_->{lua_http_kind_bytes} } @{ $h->{samples} };
    cmp_ok(scalar @by_kind, '>=', 6, 'history by kind: the samples hold the bytes by kind');
    cmp_ok($by_kind[-1]{lua_http_kind_bytes}{string}, '>', $by_kind[0]{lua_http_kind_bytes}{string}, 'history by kind: the strings grew in them');
    unlike($t->error_log, qr/unknown process|\[alert\]|\[crit\]/, 'history by kind: no alert in error.log');
    $t->stop;
}

# The fork's stall is estimated before it is made (the kernel copies a
# page-table entry per private resident page): over the allowed stall, no
# child is forked, the answer says the estimate, the private memory behind it
# (checked against statm read from outside) and how to allow it; asked with
# that, the walk runs and says its estimate beside the stall measured. The
# history's walks keep to the same bound.
sub stall_bound {
    my $t = NginxTest->new;
    $t->write_file_expand('nginx.conf', <<'EOF');
%%LOAD_LUA%%
%%LOAD_MODULE%%
%%TEST_GLOBALS%%
worker_processes 1;
events { worker_connections 128; }
http {
    %%TEST_GLOBALS_HTTP%%
    memory_status_interval 1s;
    memory_status_lua_walk_history on;
    memory_status_lua_walk_max_stall 1ms;
    # 200 MiB of private pages: LuaJIT maps each 1 MiB string apart.
    init_worker_by_lua_block {
        big = {}
        for i = 1, 200 do big[i] = string.rep("b", 1048000) .. i end
    }
    server {
        listen 127.0.0.1:%%PORT_1%%;
        location = /memory_status { memory_status; }
    }
}
EOF
    $t->run;
    my $port = $t->port(1);
    my ($worker) = $t->worker_pids;
    my ($j, $res) = $t->get_json($port, '/memory_status?lua_largest=1');
    my (undef, $resident, $shared) = split ' ', NginxTest::read_file_text("/proc/$worker/statm") // '';
    my $private_mib = ($resident - $shared) * 4096 / 1048576;
    is($res->{status}, 200, 'stall bound: the answer is 200');
    ok(!exists $j->{lua}{http}{largest}, 'stall bound: no walk over the bound');
    my ($e) = grep { $_->{source} eq 'lua.http.largest' } @{ $j->{errors} };
    like($e->{error} // '', qr/^the walk's fork would hold the event loop about [\d.]+ ms \(it copies the page tables of \d+ MiB of private memory\), over the 1\.0 ms allowed: ask with max_stall=\d+ms, or raise memory_status_lua_walk_max_stall$/,
        'stall bound: the reason says the estimate and how to allow it') or diag explain $j->{errors};
    my ($said_mib) = ($e->{error} // '') =~ /of (\d+) MiB/;
    within($said_mib, $private_mib, 'stall bound: the private memory said against statm');
    my ($allow) = ($e->{error} // '') =~ /max_stall=(\d+ms)/;
    ($j) = $t->get_json($port, "/memory_status?lua_largest=1&max_stall=$allow");
    my $l = $j->{lua}{http}{largest};
    ok($l && $l->{walked} > 0, "stall bound: max_stall=$allow walks") or diag explain $j->{errors};
    cmp_ok($l->{fork_estimate_us} // 0, '>', 1000, 'stall bound: the walk says its estimate');
    cmp_ok($l->{fork_us} // 0, '>', 0, 'stall bound: and the stall measured');
    diag("stall bound: $private_mib MiB private, fork estimated $l->{fork_estimate_us} us, held the loop $l->{fork_us} us") if $l;
    ($j) = $t->get_json($port, '/memory_status?lua_largest=1');
    ok(!exists $j->{lua}{http}{largest}, 'stall bound: the next walk, estimated with that fork, is still over');
    for my $bad (['max_stall=0ms&lua_largest=1', 'max_stall'], ['max_stall=5ms', 'max_stall= needs lua_largest=1']) {
        my $r = $t->get($port, "/memory_status?$bad->[0]");
        is($r->{status}, 400, "stall bound: $bad->[0] is 400");
        like($r->{content}, qr/\Q$bad->[1]\E/, "stall bound: $bad->[0] says why");
    }
    sleep 3;
    ($j) = $t->get_json($port, '/memory_status?history=1');
    my ($h) = grep { $_->{pid} == $worker } @{ $j->{history}{processes} };
    cmp_ok(scalar @{ $h->{samples} // [] }, '>=', 2, 'stall bound: the history samples');
    ok(!grep({ $_->{lua_http_kind_bytes} } @{ $h->{samples} // [] }), 'stall bound: the history walks nothing over the bound');
    my ($he) = grep { $_->{source} eq 'history.lua_http_kind_bytes' } @{ $j->{errors} };
    like($he->{error} // '', qr/^the history's last walk gave no kinds: the walk's fork would hold the event loop about [\d.]+ ms/,
        'stall bound: the answer says why the history has no kinds') or diag explain $j->{errors};
    my @children = grep { (NginxTest::parent_of($_) // 0) == $worker } map { m{^/proc/(\d+)$} ? $1 : () } glob '/proc/[0-9]*';
    is(scalar @children, 0, 'stall bound: no child left');
    unlike($t->error_log, qr/\[alert\]|\[crit\]/, 'stall bound: no alert in error.log');
    $t->stop;
}

# The walk across nginx's lifecycle: a failed reload does not switch the
# history's walks on (the setting is the running configuration's, also in the
# worker respawned after it); reloads during walks leave no child behind; in
# single-process mode walks answer, and reloads with the history's walks
# every second log nothing of ours.
sub lifecycle {
    my $holder = IO::Socket::INET->new(LocalAddr => '127.0.0.1', LocalPort => 0, Listen => 1, ReuseAddr => 0)
        or die "no port: $!";
    my $busy = $holder->sockport;
    my $conf = sub {
        my ($extra, $single) = @_;
        return <<"EOF";
%%LOAD_LUA%%
%%LOAD_MODULE%%
%%TEST_GLOBALS%%
worker_processes 1;
@{[ $single ? 'master_process off;' : '' ]}
events { worker_connections 128; }
http {
    %%TEST_GLOBALS_HTTP%%
    memory_status_interval 1s;
    $extra
    init_by_lua_block { held = {} for i = 1, 400000 do held[i] = "h" .. i end }
    server {
        listen 127.0.0.1:%%PORT_1%%;
        location = /memory_status { memory_status; }
    }
}
EOF
    };
    my $t = NginxTest->new;
    my $port = $t->port(1);
    $t->write_file_expand('nginx.conf', $conf->(''));
    $t->run;
    $t->write_file_expand('nginx.conf', $conf->("memory_status_lua_walk_history on;\n    server { listen 127.0.0.1:$busy; }"));
    kill 'HUP', $t->master_pid;
    $t->wait_for(sub { $t->error_log =~ /still could not bind/ }, 'the failed reload');
    my ($worker) = $t->worker_pids;
    kill 'KILL', $worker;
    $t->wait_for(sub { my ($w) = $t->worker_pids; $w && $w != $worker }, 'the respawned worker');
    sleep 3;
    my ($j) = $t->get_json($port, '/memory_status?history=1');
    ok(!grep({ $_->{lua_http_kind_bytes} } map { @{ $_->{samples} } } @{ $j->{history}{processes} }),
        'lifecycle: a failed reload does not switch the history\'s walks on, nor in the respawned worker');

    $t->write_file_expand('nginx.conf', $conf->('memory_status_lua_walk_history on;'));
    for my $n (1 .. 3) {
        my @socks = map { NginxTest::send_request($port, '/memory_status?lua_largest=1') } 1 .. 2;
        select(undef, undef, undef, 0.05);
        $t->reload;
        my @got = map { (NginxTest::read_reply($_))[0] } @socks;
        ok(!grep({ $_ ne '200' } @got), "lifecycle: walks asked just before reload $n answer (@got)");
    }
    sleep 9;
    my %workers = map { $_ => 1 } $t->worker_pids;
    my @orphans = grep {
        my $adj = NginxTest::read_file_text("/proc/$_/oom_score_adj") // '';
        my $comm = NginxTest::read_file_text("/proc/$_/comm") // '';
        $adj =~ /^1000$/ && $comm =~ /^nginx/ && !$workers{ NginxTest::parent_of($_) };
    } map { m{/proc/(\d+)$} ? $1 : () } glob '/proc/[0-9]*';
    is(scalar @orphans, 0, 'lifecycle: no walk\'s child outlives its worker') or diag "@orphans";
    my ($after) = $t->get_json($port, '/memory_status?history=1');
    ok((grep { $_->{lua_http_kind_bytes} } map { @{ $_->{samples} } } @{ $after->{history}{processes} }),
        'lifecycle: after a good reload the history walks');
    unlike($t->error_log, qr/unknown process|\[crit\]|memory_status: panic/, 'lifecycle: nothing of ours in error.log');
    $t->stop;

    my $s = NginxTest->new;
    my $sport = $s->port(1);
    $s->write_file_expand('nginx.conf', $conf->('memory_status_lua_walk_history on;', 1));
    $s->run(single => 1);
    # A history tick may be walking (every second here): a request then
    # hears so (README) and asks again.
    my $sj;
    for (1 .. 10) {
        ($sj) = $s->get_json($sport, '/memory_status?lua_largest=1');
        last if $sj->{lua}{http}{largest};
        select(undef, undef, undef, 0.3);
    }
    ok($sj->{lua}{http}{largest}, 'master_process off: a walk answers') or diag explain $sj->{errors};
    my $single = $s->master_pid;
    for my $n (1 .. 2) {
        kill 'HUP', $single;
        sleep 2.5;
        ok(kill(0, $single), "master_process off, reload $n: the process lives past two walking ticks");
    }
    unlike($s->error_log, qr/unknown process|\[alert\]|\[crit\]|memory_status: panic/, 'master_process off: nothing of ours in error.log');
    $s->stop;
}
