#!/usr/bin/perl

# The stream Lua VM (ngx_stream_lua_module, OpenResty's; Debian packages none,
# so this runs on the platform matrix of scripts/test): gc_bytes against the
# stream VM's own collectgarbage("count"), both VMs side by side in either load
# order, LuaJIT's direct chunks with one VM and with two, the census.

use warnings;
use strict;

use FindBin;
use lib "$FindBin::Bin/lib";

use IO::Socket::INET;
use Test::More;
use NginxTest;
use MemoryStatus qw(check_base_shape resident_sum unexpected_errors);

my $STREAM_LUA = "$NginxTest::MODULES_DIR/ngx_stream_lua_module.so";
plan skip_all => "no stream Lua module in this build ($STREAM_LUA; Debian 12 packages none)"
    unless -f $STREAM_LUA && NginxTest::has_lua();

my $MiB = 1024 * 1024;

# The stream VM's collector is stopped: its total only grows between readings.
sub start {
    my ($load) = @_;
    my $t = NginxTest->new;
    $t->write_file_expand('nginx.conf', <<"EOF");
$load
%%TEST_GLOBALS%%
worker_processes 1;
events { worker_connections 128; }
stream {
    init_by_lua_block { collectgarbage("stop") }
    server {
        listen 127.0.0.1:%%PORT_2%%;
        content_by_lua_block {
            local line = ngx.req.socket():receive()
            if line == "count" then
                ngx.say(string.format("%.0f", collectgarbage("count") * 1024))
            elseif line == "allocate" then
                big = {}
                for i = 1, 8 * 1024 * 1024 do big[i] = i end
                ngx.say("ok")
            elseif line == "jit" then
                ngx.say(jit.version, "|", tostring(jit.status()))
            end
        }
    }
}
http {
    %%TEST_GLOBALS_HTTP%%
    server {
        listen 127.0.0.1:%%PORT_1%%;
        location = /memory_status { memory_status; }
    }
}
EOF
    $t->run;
    return $t;
}

sub stream_say {
    my ($t, $line) = @_;
    my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1:' . $t->port(2), Timeout => 30)
        or die "connect: $!";
    print $s "$line\n";
    local $/;
    my $reply = <$s> // '';
    $reply =~ s/\n\z//;
    return $reply;
}

my $LOAD_STREAM_LUA = "load_module $STREAM_LUA;";
my %orders = (
    'lua first' => "%%LOAD_LUA%%\n%%LOAD_STREAM%%\n$LOAD_STREAM_LUA\n%%LOAD_MODULE%%",
    'module first' => "%%LOAD_MODULE%%\n%%LOAD_STREAM%%\n$LOAD_STREAM_LUA\n%%LOAD_LUA%%",
);
for my $name (sort keys %orders) {
    my $t = start($orders{$name});
    my $port = $t->port(1);
    my $before = stream_say($t, 'count');
    my ($j) = $t->get_json($port, '/memory_status');
    my $after = stream_say($t, 'count');
    check_base_shape($j, $name);
    my $vm = $j->{lua}{stream};
    ok($vm, "$name: lua.stream present");
    ok($j->{lua}{http}, "$name: lua.http present beside it");
    cmp_ok($vm->{gc_bytes}, '>=', $before, "$name: stream gc_bytes >= collectgarbage before ($before)");
    cmp_ok($vm->{gc_bytes}, '<=', $after, "$name: stream gc_bytes <= collectgarbage after ($after)");
    cmp_ok(abs($vm->{gc_bytes} - $before), '<=', 0.01 * $before, "$name: within 1%");
    is($vm->{allocator}{kind}, 'luajit', "$name: LuaJIT's own allocator");
    my ($version, $status) = split /\|/, stream_say($t, 'jit');
    is($vm->{version}, $version, "$name: version as the stream VM's jit.version says");
    is($vm->{jit_enabled} ? 'true' : 'false', $status, "$name: jit_enabled as jit.status() says");
    is($vm->{library}, $j->{lua}{http}{library}, "$name: one LuaJIT library for both VMs");
    is(resident_sum($j), $j->{process}{resident_bytes}, "$name: owners + unattributed = RSS");
    $t->done_file;
}

# Two VMs: a 64 MiB array in the stream VM is a LuaJIT direct chunk that could be
# either VM's: it stays in unattributed, which says so, and errors too.
{
    my $t = start($orders{'lua first'});
    my $port = $t->port(1);
    is(stream_say($t, 'allocate'), 'ok', 'the stream VM made a 64 MiB array');
    my ($j) = $t->get_json($port, '/memory_status');
    my $u = $j->{breakdown}{unattributed};
    cmp_ok($u->{lua_direct_chunks_found}, '>=', 1, 'two VMs: the direct chunk found, in unattributed');
    cmp_ok($u->{lua_direct_resident_bytes}, '>=', 64 * $MiB, 'two VMs: its 64 MiB resident counted there');
    ok((grep { $_ eq 'lua_direct_chunks' } @{ $u->{includes} }), 'unattributed includes lua_direct_chunks');
    cmp_ok($u->{resident_bytes}, '>=', 64 * $MiB, 'unattributed holds them');
    is($j->{breakdown}{lua_stream}{direct_chunks_found}, 0, 'lua_stream claims none of them');
    my ($err) = grep { $_->{source} eq 'breakdown.lua' } @{ $j->{errors} };
    like($err->{error} // '', qr/^\d+ LuaJIT direct chunks \(\d+ bytes resident\) belong to the http or the stream VM/,
        'errors says why');
    is(resident_sum($j), $j->{process}{resident_bytes}, 'owners + unattributed = RSS');
    my ($c) = $t->get_json($port, '/memory_status?lua_objects=1');
    my $o = $c->{lua}{stream}{objects};
    ok($o && !$o->{truncated}, 'the stream VM census');
    cmp_ok($o->{types}{table}{bytes}, '>=', 64 * $MiB, 'the census counts the 64 MiB array');
    cmp_ok($o->{bytes} + $o->{string_table_bytes}, '>=', 0.8 * $c->{lua}{stream}{gc_bytes},
        'stream census accounts for its gc_bytes');
    $t->done_file;
}

# The stream VM alone: its direct chunks are its own.
{
    my $t = start("%%LOAD_STREAM%%\n$LOAD_STREAM_LUA\n%%LOAD_MODULE%%");
    my $port = $t->port(1);
    my ($j0) = $t->get_json($port, '/memory_status');
    is($j0->{lua}{http}, undef, 'stream VM alone: lua.http null');
    is(stream_say($t, 'allocate'), 'ok', 'the stream VM made a 64 MiB array');
    my ($j) = $t->get_json($port, '/memory_status');
    my $s = $j->{breakdown}{lua_stream};
    cmp_ok($s->{direct_chunks_found}, '>=', 1, 'stream VM alone: its direct chunk attributed to it');
    cmp_ok($s->{direct_resident_bytes}, '>=', 64 * $MiB, 'with its 64 MiB');
    cmp_ok($s->{resident_bytes} - $j0->{breakdown}{lua_stream}{resident_bytes}, '>=', 64 * $MiB,
        'lua_stream.resident_bytes rose by 64 MiB');
    is($j->{breakdown}{unattributed}{lua_direct_chunks_found}, 0, 'none left in unattributed');
    is(scalar(unexpected_errors($j)), 0, 'no errors') or diag explain [unexpected_errors($j)];
    is(resident_sum($j), $j->{process}{resident_bytes}, 'owners + unattributed = RSS');
    $t->done_file;
}

done_testing;
