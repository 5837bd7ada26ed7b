package Lifecycle;

# What the lifecycle suite shares: the configuration (each of our directives,
# zones and the base server as options), scrapers that ask every format while
# nginx goes through its events, and the check made after each event.

use warnings;
use strict;

use Exporter 'import';
use HTTP::Tiny;
use POSIX qw(WNOHANG);
use Test::More;
use Time::HiRes qw(time sleep);
use NginxTest;

our @EXPORT_OK = qw(conf start_scrapers start_h2_scraper stop_scrapers signal_exits check_server
    wait_respawn running_workers);

# Every format and depth a scraper asks for.
our @PATHS = ('/ms', '/ms?format=prometheus', '/ms?format=html', '/ms?detail=full',
    '/ms?history=1', '/ms?zone=sessions');

# Lines the suite provokes on purpose: its own kill -9, the failed reloads.
sub provoked {
    return [qr/exited on signal 9/, qr/bind\(\) .* failed/, qr/still could not bind/, qr/cannot load certificate/,
        qr/open\(\) "\/nonexistent-memory-status\.conf" failed/];
}

# The configuration. Options: workers, interval, history, format (the default
# one of /ms), zones (more http-level lines), extra (more server-level lines),
# shutdown (worker_shutdown_timeout), location => 0 (no memory_status location
# at all, the module still loaded), single => 1 (master_process off). The
# scrapers' zone "sessions" is a Lua dict, or a limit_req zone without Lua;
# the status subrequests of Lua's threads are there only with Lua.
sub conf {
    my (%o) = @_;
    my $format = $o{format} ? " memory_status_format $o{format};" : '';
    return NginxTest::standard_conf(
        lua => NginxTest::has_lua(),
        main => [($o{shutdown} ? "worker_shutdown_timeout $o{shutdown};" : ()),
            ($o{single} ? 'master_process off;' : ())],
        workers => $o{workers} // 2,
        connections => 1024,
        http => [NginxTest::zone_line('sessions', '1m'),
            ($o{interval} ? "memory_status_interval $o{interval};" : ()),
            ($o{history} ? "memory_status_history $o{history};" : ()),
            $o{zones} // ()],
        listen => ['%%PORT_1%%', '%%PORT_2%% http2'],
        status => 0,
        server => [$o{extra} // (),
            (($o{location} // 1)
                ? ("location = /ms { memory_status;$format }", 'location = /internal-ms { internal; memory_status; }')
                : ()),
            'location = /hello { return 200 "hello\n"; }'],
        lua_server => <<'EOF',
        location = /parent-errors {
            content_by_lua_block {
                ngx.thread.spawn(function() ngx.location.capture('/internal-ms?detail=full') end)
                ngx.sleep(0)
                error('boom')
            }
        }
        location = /parent-exits {
            content_by_lua_block {
                ngx.thread.spawn(function() ngx.location.capture('/internal-ms') end)
                ngx.sleep(0)
                ngx.exit(204)
            }
        }
        location = /capture-multi-errors {
            content_by_lua_block {
                ngx.thread.spawn(function()
                    ngx.location.capture_multi({{'/internal-ms'}, {'/internal-ms?format=prometheus'}})
                end)
                ngx.sleep(0)
                error('boom')
            }
        }
EOF
    );
}

# h2load asking the status location over HTTP/2 (cleartext) until stopped,
# its streams reset by the client and by nginx's shutdowns; () without h2load.
sub start_h2_scraper {
    my ($t) = @_;
    return () if system('command -v h2load >/dev/null 2>&1');
    my $port = $t->port(2);
    my $parent = $$;
    my $pid = fork // die "fork: $!";
    if (!$pid) {
        open STDOUT, '>', '/dev/null';
        open STDERR, '>', '/dev/null';
        while (getppid() == $parent) {
            system('h2load', '-n', '60', '-c', '2', '-m', '4', '-t', '1',
                "http://127.0.0.1:$port/ms", "http://127.0.0.1:$port/ms?detail=full",
                "http://127.0.0.1:$port/ms?format=prometheus");
        }
        POSIX::_exit(0);
    }
    return ($pid);
}

# Forks $n clients that ask every path in turn until stopped.
sub start_scrapers {
    my ($t, $port, $n) = @_;
    my @pids;
    my $parent = $$;
    for my $i (1 .. $n) {
        my $pid = fork // die "fork: $!";
        if (!$pid) {
            my $ua = HTTP::Tiny->new(timeout => 5, keep_alive => $i % 2);
            my $k = $i;
            # Ends with the test, whichever way the test ends.
            while (getppid() == $parent) {
                $ua->get("http://127.0.0.1:$port" . $PATHS[$k++ % @PATHS]);
            }
            POSIX::_exit(0);
        }
        push @pids, $pid;
    }
    return @pids;
}

sub stop_scrapers {
    my ($t, @pids) = @_;
    kill 'KILL', @pids;
    waitpid $_, 0 for @pids;
    system('pkill', '-KILL', '-f', "h2load .*127.0.0.1:" . $t->port(2) . '/');
}

# Every "exited on signal N" in the log but the test's own kill -9.
sub signal_exits {
    my ($t) = @_;
    return grep { !/signal 9\b/ } $t->error_log =~ /(exited on signal \d+)/g;
}

# Waits until a worker killed by the test is replaced.
sub wait_respawn {
    my ($t, $gone) = @_;
    my $want = $t->configured_workers;
    $t->wait_for(sub {
        my @w = $t->worker_pids;
        @w >= $want && !grep { $_ == $gone } @w;
    }, "a new worker in place of $gone");
}

# The running (not shutting down) workers of a master.
sub running_workers { NginxTest::workers_of($_[0], running => 1) }

# After an event: every format answers 200, the answer lists its master and
# each of its master's running workers (beside an upgrade's two masters, the
# master of whichever worker answered), and the server's breakdown adds up to
# its resident bytes.
sub check_server {
    my ($t, $port, $name) = @_;
    for my $path (@PATHS) {
        my $r = $t->get($port, $path);
        is($r->{status}, 200, "$name: $path answers 200") or diag substr($r->{content}, 0, 300);
    }
    is_deeply([signal_exits($t)], [], "$name: no worker died on a signal");
    # Under valgrind the processes' titles are valgrind's: an answer cannot
    # tell nginx's processes apart, and lists only its own (memcheck's
    # verdicts are what counts there).
    return if $NginxTest::VALGRIND;
    # Freshly respawned workers register as they start.
    my ($j, $master, @workers);
    $t->wait_for(sub {
        ($j) = $t->get_json($port, '/ms?detail=full&format=json');
        $master = NginxTest::parent_of($j->{nginx}{pid});
        @workers = running_workers($master);
        my %listed = map { $_->{pid} => 1 } @{ $j->{processes} };
        !grep { !$listed{$_} } @workers, $master;
    }, "$name: every worker listed");
    my %listed = map { $_->{pid} => $_ } @{ $j->{processes} };
    ok($listed{$master} && $listed{$master}{role} eq 'master', "$name: the master listed");
    is(scalar(grep { $_->{role} eq 'worker' && !$_->{exiting} } values %listed), scalar @workers,
        "$name: the running workers listed, and no other");
    my $s = $j->{server};
    my $sum = 0;
    $sum += $_ for values %{ $s->{breakdown} };
    is($sum, $s->{resident_bytes}, "$name: server.breakdown adds up to server.resident_bytes");
}

1;
