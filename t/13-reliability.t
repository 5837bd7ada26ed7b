#!/usr/bin/perl

# The reliability suite: a request fuzzer over raw HTTP/1 sockets (pipelined)
# and h2c, a reload storm with workers killed under scrape load, growth over
# 100,000 mixed answers, and workers that cannot read /proc/self/pagemap.
# Bounded: about two minutes on two cores.

use warnings;
use strict;

use FindBin;
use lib "$FindBin::Bin/lib";

use IO::Socket::INET;
use JSON::PP qw(decode_json);
use POSIX qw(WNOHANG);
use Test::More;
use Time::HiRes qw(time sleep);
use NginxTest qw(proc_status_bytes);
use MemoryStatus qw(resident_sum);

# Without Debian's Lua module all but the workers made undumpable by Lua; the
# zone the scrapers ask for is then a limit_req zone of that name.
my $LUA = NginxTest::has_lua();
my $NO_LUA = "Debian's Lua module is not installed";

# The configuration. Options: workers, main (more main-level lines), http and
# zones (more http-level lines).
sub conf {
    my (%o) = @_;
    return NginxTest::standard_conf(
        lua => $LUA,
        main => $o{main},
        workers => $o{workers} // 1,
        connections => 1024,
        http => [NginxTest::zone_line('sessions', '4m'), $o{http} // (), $o{zones} // ()],
        listen => ['%%PORT_1%% reuseport', '%%PORT_2%% http2'],
        server => 'location = /metrics { memory_status; memory_status_format prometheus; }',
        lua_server => <<'EOF',
            location = /fill {
                content_by_lua_block {
                    for i = 1, 2000 do ngx.shared.sessions:set("k" .. i, string.rep("v", 100)) end
                    ngx.say("ok")
                }
            }
EOF
    );
}

my $t = NginxTest->new;
$t->write_file_expand('nginx.conf', conf(workers => 2));
$t->run;
my ($port, $h2port) = ($t->port(1), $t->port(2));
$t->get($port, '/fill') if $LUA;

# --- the fuzzer: HTTP/1 ------------------------------------------------------------

srand(20261129);
my @ARGS = qw(zone detail format refresh lua_objects lua_objects_limit);
my @VALUES = ('sessions', 'full', 'json', 'prometheus', 'html', 'text', '1', '0', '5', '-1', '86401', 'yes',
    '', '%', '%z', '%0', '%00', '%ff%fe', '%0d%0aX', '%e2%80%ae', '<script>', '"', '\\', '%5C',
    'A' x 3000, '1' x 30, 'sessions%00', '+', '%2B', 'full&detail=full', '=', '&');
my @ACCEPT = ('*/*', 'text/plain;version=0.0.4', 'application/openmetrics-text;version=1.0.0',
    'text/html', 'application/json', "text/plain;\tversion=0.0.4", 'text/plain', 'application/json, text/plain, */*',
    'x' x 2000, ',,,;;;==');
my @METHODS = (('GET') x 20, ('HEAD') x 4, qw(POST PUT DELETE OPTIONS PROPFIND PATCH TRACE));

sub pick { $_[ int rand @_ ] }

sub random_bytes {
    my $n = 1 + int rand 12;
    return join '', map { sprintf '%%%02x', int rand 256 } 1 .. $n;
}

my @VALID = ('', 'format=json', 'format=prometheus', 'format=html', 'format=text', 'zone=sessions', 'detail=full',
    'lua_objects=1', 'lua_objects=1&lua_objects_limit=100', 'format=html&refresh=5', 'zone=sessions&format=prometheus');

sub random_query {
    return pick(@VALID) if rand() < 0.4;
    my @parts;
    for (0 .. int rand 4) {
        my $r = rand;
        if ($r < 0.6) {
            push @parts, pick(@ARGS) . "=" . (rand() < 0.8 ? pick(@VALUES) : random_bytes());
        } elsif ($r < 0.8) {
            push @parts, random_bytes() . '=' . random_bytes();
        } else {
            push @parts, pick('', '=', '&', 'zone', 'zone=', '%', 'detail=full&zone=sessions');
        }
    }
    return join '&', @parts;
}

sub random_request {
    my ($last) = @_;
    my $method = pick(@METHODS);
    my $query = random_query();
    my $path = pick('/memory_status', '/metrics', '/memory_status', '/memory_status/', '/nothing');
    my @headers = ("Host: fuzz");
    push @headers, 'Accept: ' . pick(@ACCEPT) for 1 .. int rand 3;
    push @headers, 'X-Memory-' . int(rand 1000) . ': ' . ('y' x int rand 200) if rand() < 0.3;
    my $body = '';
    if ($method ne 'GET' && $method ne 'HEAD' && rand() < 0.7) {
        $body = 'b' x int rand 5000;
        push @headers, 'Content-Length: ' . length $body;
    }
    push @headers, 'Connection: close' if $last;
    return ($method, "$method $path?$query HTTP/1.1\r\n" . join('', map { "$_\r\n" } @headers) . "\r\n$body");
}

# Splits a stream of responses (the methods in order tell which have no body).
sub split_responses {
    my ($stream, @methods) = @_;
    my @out;
    for my $method (@methods) {
        my $end = index($stream, "\r\n\r\n");
        last if $end < 0;
        my $head = substr($stream, 0, $end);
        my ($status) = $head =~ m{^HTTP/1\.1 (\d+)};
        my ($len) = $head =~ /^Content-Length: (\d+)/mi;
        my ($type) = $head =~ /^Content-Type: ([^\r\n]*)/mi;
        my $chunked = $head =~ /^Transfer-Encoding: chunked/mi;
        my $body_len = ($method eq 'HEAD' || !defined $len) ? 0 : $len;
        last if $chunked;
        my $body = substr($stream, $end + 4, $body_len);
        $stream = substr($stream, $end + 4 + $body_len);
        push @out, { method => $method, status => $status // 0, type => $type // '', body => $body, head => $head };
    }
    return @out;
}

my %tally;
my @bad;
my ($json_ok, $prom_ok, $html_ok, $text_ok) = (0, 0, 0, 0);
my @prom_samples;
for my $conn (1 .. 400) {
    my $n = 1 + int rand 8;                     # requests pipelined on one connection
    my (@methods, $wire);
    for my $i (1 .. $n) {
        my ($m, $req) = random_request($i == $n);
        push @methods, $m;
        $wire .= $req;
    }
    my $s = IO::Socket::INET->new(PeerAddr => "127.0.0.1:$port", Timeout => 10) or die "connect: $!";
    print $s $wire;
    shutdown($s, 1) if rand() < 0.2;              # some clients half-close early
    local $/;
    my $stream = <$s> // '';
    close $s;
    for my $r (split_responses($stream, @methods)) {
        $tally{$r->{status}}++;
        if ($r->{status} == 200 && $r->{method} eq 'GET') {
            if ($r->{type} eq 'application/json') {
                if (eval { decode_json($r->{body}) }) { $json_ok++; NginxTest::spool_answer($r->{body}) if $json_ok % 50 == 1 }
                else { push @bad, "invalid JSON: " . substr($r->{body}, 0, 100) }
            } elsif ($r->{type} =~ m{^text/plain; version=0\.0\.4}) {
                $prom_ok++;
                push @prom_samples, $r->{body} if @prom_samples < 20;
            } elsif ($r->{type} =~ m{^text/html}) {
                $r->{body} =~ m{</html>\s*\z} ? $html_ok++ : push @bad, 'truncated HTML';
            } elsif ($r->{type} eq 'text/plain; charset=utf-8') {
                $r->{body} =~ m{\Anginx .*^More: [^\n]*\n\z}ms ? $text_ok++ : push @bad, 'truncated text';
            } else {
                push @bad, "200 with $r->{type}";
            }
        } elsif ($r->{status} >= 400 && $r->{status} < 500 && $r->{head} =~ /^X-Content-Type-Options: nosniff/mi) {
            # The module's own reasons: text/plain, one line.
            push @bad, "reason not text/plain: $r->{type}" unless $r->{type} eq 'text/plain; charset=utf-8';
            push @bad, "reason not one line: $r->{body}"
                unless $r->{method} eq 'HEAD' || $r->{body} =~ /^memory_status: [^\x00-\x1f\x7f]*\n\z/;
        } elsif ($r->{status} >= 500) {
            push @bad, "$r->{status} for a $r->{method}";
        }
    }
}
is(scalar @bad, 0, 'fuzzer: every 200 valid in its format, every reason one line of text/plain, no 5xx')
    or diag explain [@bad[0 .. ($#bad < 9 ? $#bad : 9)]];
note('fuzzer: statuses ' . join ', ', map { "$_ x$tally{$_}" } sort keys %tally);
cmp_ok($json_ok, '>', 50, "fuzzer: $json_ok JSON answers");
cmp_ok($tally{400} // 0, '>', 100, 'fuzzer: bad arguments got 400');

SKIP: {
    skip 'promtool not installed', 2 unless -x '/usr/bin/promtool';
    my $bad = 0;
    cmp_ok(scalar @prom_samples, '>', 5, 'fuzzer: Prometheus answers to check');
    for my $body (@prom_samples) {
        $t->write_file('fuzz.prom', $body);
        my $out = `promtool check metrics < @{[ $t->prefix ]}/fuzz.prom 2>&1`;
        $bad++ if $?;
    }
    is($bad, 0, 'fuzzer: ' . scalar(@prom_samples) . ' Prometheus answers pass promtool');
}

# --- the fuzzer: h2c ---------------------------------------------------------------

SKIP: {
    skip 'h2load (nghttp2-client) not installed', 2 unless -x '/usr/bin/h2load';
    my @uris;
    for (1 .. 2000) {
        (my $q = random_query()) =~ s/[^\x21-\x7e]/%20/g;
        push @uris, "http://127.0.0.1:$h2port" . pick('/memory_status', '/metrics') . "?$q";
    }
    $t->write_file('uris', join "\n", @uris, '');
    my $out = `h2load -i @{[ $t->prefix ]}/uris -n 2000 -c 4 -m 20 2>&1`;
    like($out, qr/requests: 2000 total, 2000 started, 2000 done/, 'h2c fuzzer: 2000 requests answered');
    like($out, qr/status codes: \d+ 2xx, \d+ 3xx, \d+ 4xx, 0 5xx/, 'h2c fuzzer: no 5xx') or diag $out;
}

my @exits = $t->error_log =~ /(exited on signal \d+)/g;
is(scalar @exits, 0, 'fuzzers: no worker exited on a signal');

# --- a reload storm under scrape load, with workers killed ----------------------------

# Scrapers run in children; each records the statuses it got.
sub start_scrapers {
    my ($n) = @_;
    my @kids;
    for my $i (1 .. $n) {
        my $file = $t->prefix . "/scraper$i";
        my $pid = fork // die "fork: $!";
        if (!$pid) {
            my (%st, $sum_bad);
            my $stop = 0;
            local $SIG{TERM} = sub { $stop = 1 };
            my @paths = ('/memory_status', '/metrics', '/memory_status?format=html', '/memory_status?zone=sessions');
            my $k = 0;
            while (!$stop) {
                my $path = $paths[$k++ % @paths];
                my $r = NginxTest->http('GET', $port, $path);
                # 599: HTTP::Tiny's own code for a connection a killed worker dropped.
                $st{$r->{status}}++;
                if ($r->{status} == 200 && $path eq '/memory_status') {
                    my $j = eval { decode_json($r->{content}) };
                    my $sum = $j && resident_sum($j);
                    $sum_bad++ unless defined $sum && $sum == $j->{process}{resident_bytes};
                }
            }
            open my $fh, '>', $file or die;
            print $fh join(' ', map { "$_=$st{$_}" } sort keys %st), " sum_bad=", $sum_bad // 0, "\n";
            close $fh;
            POSIX::_exit(0);
        }
        push @kids, [$pid, $file];
    }
    return @kids;
}

sub stop_scrapers {
    my (@kids) = @_;
    kill 'TERM', map { $_->[0] } @kids;
    waitpid $_->[0], 0 for @kids;
    my (%st, $sum_bad);
    for (@kids) {
        my $line = NginxTest::read_file_text($_->[1]) // '';
        $st{$1} += $2 while $line =~ /(\d+)=(\d+)/g;
        $sum_bad += $1 if $line =~ /sum_bad=(\d+)/;
    }
    return (\%st, $sum_bad);
}

{
    my @kids = start_scrapers(3);
    my @killed;
    for my $i (1 .. 100) {
        my $zones = join "\n", map { NginxTest::zone_line("storm$_", '256k') } 1 .. ($i % 5) * 3;
        $zones .= "\nlimit_req_zone \$binary_remote_addr zone=storm_req$i:64k rate=1r/s;" if $i % 2;
        # Written aside and renamed: the master never reads half a file.
        $t->write_file_expand('nginx.conf.new', conf(workers => 2, zones => $zones));
        rename $t->prefix . '/nginx.conf.new', $t->prefix . '/nginx.conf' or die "rename: $!";
        kill 'HUP', $t->master_pid;
        sleep 0.1;
        if ($i % 20 == 0) {
            my ($w) = $t->worker_pids;
            push @killed, $w;
            kill 'KILL', $w if $w;
        }
    }
    sleep 1;
    my ($st, $sum_bad) = stop_scrapers(@kids);
    my $total = 0;
    $total += $_ for values %$st;
    my $bad = 0;
    $bad += $st->{$_} for grep { $_ != 200 && $_ != 599 } keys %$st;
    note('reload storm: ' . join ', ', map { "$_ x$st->{$_}" } sort keys %$st);
    cmp_ok($total, '>', 300, "reload storm: $total scrapes during 100 reloads and 5 kills");
    is($bad, 0, 'reload storm: no answer but 200 (or a connection a killed worker dropped)');
    cmp_ok($st->{599} // 0, '<=', 10 * @killed, 'reload storm: dropped connections only around the kills');
    is($sum_bad, 0, 'reload storm: every JSON answer adds up to RSS');
    $t->wait_for(sub { scalar(() = $t->worker_pids) == 2 }, 'two workers after the storm');
    my ($j) = $t->get_json($port, '/memory_status');
    ok($j->{nginx}{pid}, 'after the storm: answers');
    my $allowed = join '|', @killed;
    $t->done_file(allow => [qr/worker process ($allowed) exited on signal 9/,
        qr/shared memory zone "[^"]+" was locked by ($allowed)/]);
}

# --- growth over 100,000 mixed answers -------------------------------------------------

SKIP: {
    skip 'wrk not installed', 1 unless -x '/usr/bin/wrk';
    my $g = NginxTest->new;
    $g->write_file_expand('nginx.conf', conf(workers => 1));
    $g->run;
    my $gport = $g->port(1);
    $g->get($gport, '/fill') if $LUA;
    my ($worker) = $g->worker_pids;
    $g->write_file('mix.lua', <<'EOF');
local paths = {}
for i = 1, 40 do paths[#paths + 1] = "/memory_status" end
for i = 1, 20 do paths[#paths + 1] = "/metrics" end
for i = 1, 10 do paths[#paths + 1] = "/memory_status?format=html" end
for i = 1, 25 do paths[#paths + 1] = "/memory_status?zone=sessions" end
paths[#paths + 1] = "/memory_status?detail=full"
paths[#paths + 1] = "/memory_status?lua_objects=1"
paths[#paths + 1] = "/memory_status?zone=nothing"
paths[#paths + 1] = "/memory_status?bad=1"
local n = 0
request = function()
    n = n + 1
    return wrk.format("GET", paths[(n % #paths) + 1])
end
EOF
    my $run = sub {
        my ($seconds) = @_;
        my $out = `wrk -t1 -c4 -d${seconds}s -s @{[ $g->prefix ]}/mix.lua http://127.0.0.1:$gport 2>&1`;
        my ($n) = $out =~ /(\d+) requests in/;
        return $n // 0;
    };
    $run->(3);                                   # warm-up
    my $rss0 = proc_status_bytes($worker, 'VmRSS');
    my $answers = 0;
    my $deadline = time + 150;
    $answers += $run->(10) while $answers < 100_000 && time < $deadline;
    my $rss1 = proc_status_bytes($worker, 'VmRSS');
    cmp_ok($answers, '>=', 100_000, "growth: $answers mixed answers");
    cmp_ok($rss1 - $rss0, '<', 1024 * 1024, sprintf 'growth: the worker grew %.0f KiB', ($rss1 - $rss0) / 1024);
    is(($g->worker_pids)[0], $worker, 'growth: the same worker throughout');
    $g->done_file;
}

# --- workers as www-data that cannot read /proc/self/pagemap ----------------------------

SKIP: {
    skip $NO_LUA, 9 unless $LUA;
    skip 'not root: cannot run workers as www-data', 1 unless $> == 0 && getpwnam('www-data');
    my $w = NginxTest->new;
    # Not dumpable: /proc/self files become root's, and pagemap (0400) cannot be opened.
    $w->write_file_expand('nginx.conf', conf(workers => 1, main => 'user www-data;', http => <<'EOF'));
        init_worker_by_lua_block {
            local ffi = require "ffi"
            ffi.cdef "int prctl(int, unsigned long, unsigned long, unsigned long, unsigned long);"
            ffi.C.prctl(4, 0, 0, 0, 0)
        }
EOF
    $w->run;
    my $wport = $w->port(1);
    my ($worker) = $w->worker_pids;
    my ($uid) = (NginxTest::read_file_text("/proc/$worker/status") =~ /^Uid:\s+(\d+)/m);
    is($uid, scalar getpwnam('www-data'), 'the worker runs as www-data');
    my ($j) = $w->get_json($wport, '/memory_status');
    my @sources = map { "$_->{source}: $_->{error}" } @{ $j->{errors} };
    ok((grep { /^breakdown\.text: program data: pagemap: .*(denied|not permitted)/i } @sources),
        'pagemap unreadable: named in errors') or diag explain \@sources;
    is($j->{breakdown}{text}{data_copied_bytes}, undef, 'pagemap unreadable: data_copied_bytes null');
    is(resident_sum($j), $j->{process}{resident_bytes}, 'pagemap unreadable: still adds up to RSS');
    my ($full) = $w->get_json($wport, '/memory_status?detail=full');
    ok(defined $full->{breakdown}{text}{resident_bytes}, 'detail=full: smaps stands in for text');
    for my $format (qw(prometheus html)) {
        my $r = $w->get($wport, "/memory_status?format=$format");
        is($r->{status}, 200, "pagemap unreadable: $format answers");
    }
    like($w->get($wport, '/metrics')->{content}, qr/^nginx_memory_source_unavailable\{.*source="breakdown\.text"/m,
        'Prometheus: the source unavailable is named');
    $w->done_file;
}

done_testing();
