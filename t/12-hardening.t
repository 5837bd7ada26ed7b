#!/usr/bin/perl

# A sick neighbour never stalls us, and what a request or the configuration
# makes us write is always safe: a frozen zone-lock holder (SIGSTOP), echoed
# input escaped and bounded, every Accept header read, zone names that are not
# text shown losslessly in every format.

use warnings;
use strict;

use FindBin;
use lib "$FindBin::Bin/lib";

use IO::Socket::INET;
use JSON::PP qw(decode_json);
use Test::More;
use Time::HiRes qw(time sleep);
use NginxTest;

# Without Debian's Lua module: what a request can echo and the names that are
# not Lua dicts' (no Lua holds a lock).
my $LUA = NginxTest::has_lua();
my $NO_LUA = "Debian's Lua module is not installed";

# --- a frozen lock holder ---------------------------------------------------------

SKIP: {
    skip $NO_LUA, 13 unless $LUA;
    my $t = NginxTest->new;
    $t->write_standard_conf(
        lua => 1,
        workers => 2,
        http => <<'EOF',
        lua_shared_dict big 64m;
        lua_shared_dict sessions 1m;
        lua_shared_dict other1 1m;
        lua_shared_dict other2 1m;
EOF
        # No reuseport: a stopped worker accepts nothing, the other takes all.
        server => <<'EOF',
            location = /ok { return 200 "ok\n"; }
            location = /pid { content_by_lua_block { ngx.say(ngx.worker.pid()) } }
            # Sets values forever: most of the time inside the dict's lock.
            location = /busy {
                content_by_lua_block {
                    local d = ngx.shared.big
                    local v = string.rep("v", 300)
                    local i = 0
                    while true do
                        i = i + 1
                        d:set(i % 100000, v)
                    end
                }
            }
            # Takes a dict's lock the way ngx_shmtx_lock would and keeps it: the
            # zone (dict[1]) holds shm.addr after its data pointer; the slab pool's
            # lock word comes first.
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
    );
    $t->run;
    my $port = $t->port(1);

    # GET with a hard deadline: (status, body, seconds), status 0 on timeout.
    sub timed_get {
        my ($path, $deadline) = @_;
        my $start = time;
        my $s = IO::Socket::INET->new(PeerAddr => "127.0.0.1:$port", Timeout => $deadline) or return (0, '', time - $start);
        print $s "GET $path HTTP/1.0\r\nHost: x\r\n\r\n";
        my $reply = '';
        my $rin = '';
        vec($rin, fileno($s), 1) = 1;
        while (time - $start < $deadline) {
            my $left = $deadline - (time - $start);
            last unless select(my $rout = $rin, undef, undef, $left);
            my $n = sysread($s, my $buf, 65536);
            last unless $n;
            $reply .= $buf;
        }
        my $took = time - $start;
        my ($status) = $reply =~ m{^HTTP/1\.\d (\d+)};
        my ($body) = $reply =~ /\r\n\r\n(.*)\z/s;
        return ($status // 0, $body // '', $took);
    }

    sub check_answers_while_frozen {
        my ($what, $holder, $zone) = @_;
        my ($slow, $bad, $named, $others_whole) = (0, 0, 0, 0);
        for my $i (1 .. 10) {
            for my $path ('/memory_status', "/memory_status?zone=$zone", '/memory_status?format=prometheus') {
                my ($status, $body, $took) = timed_get($path, 5);
                $slow++ if $took >= 1;
                $bad++ unless $status == 200;
                next unless $status == 200 && $path !~ /prometheus/;
                my $j = eval { decode_json($body) } or next;
                NginxTest::spool_answer($body);
                my ($z) = grep { $_->{name} eq $zone } @{ $j->{zones} };
                $named++ if $z && !defined $z->{slab} && defined $z->{size_bytes} && defined $z->{loaded_bytes}
                    && grep { $_->{source} eq "zone $zone" && $_->{error} =~ /lock held by another process/ } @{ $j->{errors} };
                $others_whole++ if !grep { $_->{name} ne $zone && !defined $_->{slab} } @{ $j->{zones} };
            }
            my ($status, $body, $took) = timed_get('/ok', 5);
            $slow++ if $took >= 1;
            $bad++ unless $status == 200;
        }
        is($bad, 0, "$what: every answer 200");
        is($slow, 0, "$what: every answer within a second, and /ok too");
        is($named, 20, "$what: zone $zone answers size and loaded, slab null, an error naming it");
        is($others_whole, 20, "$what: every other zone whole");
    }

    # The deterministic case: a worker takes the lock and is stopped.
    my $holder = $t->get($port, '/hold_lock?name=sessions')->{content};
    chomp $holder;
    like($holder, qr/^\d+$/, "worker $holder holds the sessions lock");
    kill 'STOP', $holder;
    check_answers_while_frozen('lock held by a stopped worker', $holder, 'sessions');
    kill 'KILL', $holder;
    kill 'CONT', $holder;
    $t->wait_for(sub { scalar(() = $t->worker_pids) == 2 && !grep { $_ == $holder } $t->worker_pids }, 'a new worker');
    # The master frees a dead holder's lock before it respawns; our own sampler
    # in the other worker may still hold it for a moment on a loaded machine.
    {
        my ($whole, $after);
        for (1 .. 40) {
            ($after) = $t->get_json($port, '/memory_status?zone=sessions');
            last if $whole = defined $after->{zones}[0]{slab};
            sleep 0.05;
        }
        ok($whole, 'after the holder was killed: the zone reads whole again')
            or diag explain { errors => $after->{errors}, workers => [$t->worker_pids], log => $t->error_log_tail };
    }

    # As in production: a worker busy in the dict, stopped at a random moment; try
    # until it is stopped while holding the lock.
    my $busy_pid;
    my $frozen_in_lock = 0;
    {
        my $s = IO::Socket::INET->new(PeerAddr => "127.0.0.1:$port", Timeout => 5) or die $!;
        print $s "GET /busy HTTP/1.0\r\nHost: x\r\n\r\n";
        # The busy worker is the one whose CPU time runs.
        my $cpu = sub { (split ' ', (NginxTest::read_file_text("/proc/$_[0]/stat") =~ s/^.*\) //sr))[11] };
        my %before = map { $_ => $cpu->($_) } $t->worker_pids;
        sleep 0.5;
        ($busy_pid) = grep { exists $before{$_} && $cpu->($_) - $before{$_} > 20 } $t->worker_pids;
        diag explain { workers_before => [sort keys %before], workers_now => [$t->worker_pids], log => $t->error_log_tail }
            unless $busy_pid;
        ok($busy_pid, 'a worker busy in the dict') or BAIL_OUT('no busy worker');
        for my $try (1 .. 200) {
            kill 'STOP', $busy_pid;
            sleep 0.01;
            my ($status, $body) = timed_get('/memory_status?zone=big', 5);
            if ($body =~ /lock held by another process/) {
                $frozen_in_lock = 1;
                last;
            }
            kill 'CONT', $busy_pid;
            sleep 0.005 * ($try % 7);
        }
        ok($frozen_in_lock, "the busy worker $busy_pid was stopped inside the dict's lock");
        check_answers_while_frozen('busy worker stopped in the lock', $busy_pid, 'big') if $frozen_in_lock;
        kill 'KILL', $busy_pid;
        kill 'CONT', $busy_pid;
        close $s;
    }
    $t->wait_for(sub { scalar(() = $t->worker_pids) == 2 && !grep { $_ == $busy_pid } $t->worker_pids }, 'a new worker');

    $t->done_file(allow => [
        qr/worker process (\Q$holder\E|\Q$busy_pid\E) exited on signal 9/,
        qr/shared memory zone "(sessions|big)" was locked by (\Q$holder\E|\Q$busy_pid\E)/,
    ]);
}

# --- what a request can echo ---------------------------------------------------------

my $u = NginxTest->new;
$u->write_standard_conf(
    lua => $LUA,
    http => <<"EOF",
        limit_req_zone \$binary_remote_addr zone=bin\xff\xfe:64k rate=1r/s;
        limit_req_zone \$binary_remote_addr zone=bin\xfe\xff:64k rate=1r/s;
EOF
    lua_http => <<"EOF",
        lua_shared_dict nul\x00name 64k;
        lua_shared_dict back\\\\slash 64k;
EOF
);
$u->run;
my $uport = $u->port(1);

for my $case (
    ['zone=a%0d%0aX', 404, qr/^memory_status: no zone named "a\\x0d\\x0aX"\n\z/],
    ['zone=%00%1b%5b31m%e2%80%ae', 404, qr/^memory_status: no zone named "\\x00\\x1b\[31m\\xe2\\x80\\xae"\n\z/],
    ['detail=%0aSet-Cookie:%20x', 400, qr/^memory_status: bad value "\\x0aSet-Cookie: x" for argument "detail"/],
    ['%0d%0a=1', 400, qr/^memory_status: unknown argument "\\x0d\\x0a"/],
    ['zone=' . ('A' x 5000), 404, qr/^memory_status: no zone named "A{64}\.\.\."\n\z/],
    ['zone=%3Cscript%3E', 404, qr/^memory_status: no zone named "<script>"\n\z/],
) {
    my ($query, $status, $reason) = @$case;
    my $r = $u->get($uport, "/memory_status?$query");
    is($r->{status}, $status, "?$query: $status");
    like($r->{content}, $reason, "?$query: one line, escaped, bounded");
    ok($r->{content} !~ /[\x00-\x09\x0b-\x1f\x7f]/ && $r->{content} =~ tr/\n// == 1, "?$query: no control byte but the final newline");
    is($r->{headers}{'content-type'}, 'text/plain; charset=utf-8', "?$query: text/plain; charset=utf-8");
    is($r->{headers}{'x-content-type-options'}, 'nosniff', "?$query: nosniff");
}

# Every Accept header is read.
{
    my $reply = $u->raw_http($uport, "GET /memory_status HTTP/1.0\r\nHost: x\r\nAccept: text/html\r\n"
        . "Accept: text/plain;version=0.0.4\r\n\r\n");
    like($reply, qr{^Content-Type: text/plain; version=0\.0\.4}mi, 'the second Accept header asks for Prometheus: it is read');
}

# --- names from the configuration ------------------------------------------------------

{
    my ($j) = $u->get_json($uport, '/memory_status');
    my %names = map { $_->{name} => 1 } @{ $j->{zones} };
    ok($names{'bin\\xff\\xfe'} && $names{'bin\\xfe\\xff'}, 'two names that are not UTF-8 stay two names, escaped')
        or diag explain [sort keys %names];
    SKIP: {
        skip $NO_LUA, 2 unless $LUA;
        ok($names{'nul\\x00name'}, 'a NUL in a name is escaped');
        ok($names{'back\\\\slash'}, 'a backslash in a name is escaped');
    }
    for my $asked (['bin%ff%fe', 'bin\\xff\\xfe'], ['bin%5Cxff%5Cxfe', 'bin\\xff\\xfe'], ['bin%fe%ff', 'bin\\xfe\\xff'],
                   ['nul%00name', 'nul\\x00name'], ['back%5Cslash', 'back\\\\slash']) {
        my ($query, $name) = @$asked;
        SKIP: {
            skip "$NO_LUA: no dict $name", 1 unless $LUA || $name =~ /^bin/;
            my ($z) = $u->get_json($uport, "/memory_status?zone=$query");
            is($z->{zones}[0]{name}, $name, "?zone=$query: the zone by its bytes or its escaped name");
        }
    }
    my $html = $u->get($uport, '/memory_status?format=html')->{content};
    ok($html !~ /[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]/, 'HTML: no control byte from a name');
    SKIP: {
        skip $NO_LUA, 1 unless $LUA;
        like($html, qr/nul\\x00name/, 'HTML: the escaped name');
    }
    my $prom = $u->get($uport, '/memory_status?format=prometheus')->{content};
    ok($prom !~ /[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]/, 'Prometheus: no control byte from a name');
    SKIP: {
        skip $NO_LUA, 1 unless $LUA;
        like($prom, qr/zone="nul\\\\x00name"/, 'Prometheus: the escaped name, its backslash escaped for the label');
    }
}
$u->done_file;

done_testing();
