#!/usr/bin/perl

# History: each worker keeps one sample per memory_status_interval in its ring
# of the module's history zone, the last memory_status_history of them; the
# trend of a worker whose Lua heap grows by a known amount every second is
# that rate, within 10%; steady_growth names it and not its idle sibling; a
# reload is marked and the zone is kept.

use warnings;
use strict;

use FindBin;
use lib "$FindBin::Bin/lib";

use Test::More;
use Time::HiRes qw(sleep time);
use NginxTest;
use MemoryStatus qw(unexpected_errors);

# Without Debian's Lua module: the samples, the ring, its pages and a reload;
# no heap grows and no dict fills.
my $LUA = NginxTest::has_lua();
my $NO_LUA = "Debian's Lua module is not installed";

my $CAPACITY = 12;
# Worker 1 adds 16 strings of 65,500 bytes every second to a table it keeps.
my $RATE_PER_HOUR = 16 * 65_500 * 3600;

my $t = NginxTest->new;
$t->write_standard_conf(
    lua => $LUA,
    workers => 2,
    connections => 64,
    http => ['memory_status_interval 1s;', "memory_status_history $CAPACITY;"],
    lua_http => <<'EOF',
    lua_shared_dict filling 8m;
    init_worker_by_lua_block {
        if ngx.worker.id() == 1 then
            grown = {}
            local pad = string.rep("g", 65500)
            local value = string.rep("d", 1000)
            ngx.timer.every(1, function()
                for i = 1, 16 do grown[#grown + 1] = pad .. #grown end
                -- And 100 values of 1000 bytes into a dict.
                for i = 1, 100 do ngx.shared.filling:set("k" .. #grown .. "-" .. i, value) end
            end)
        end
    }
EOF
);
$t->run;
my $port = $t->port(1);
my $started = time;

sub worker_pid {
    my ($j, $n) = @_;
    my ($p) = grep { $_->{role} eq 'worker' && $_->{worker} == $n && !$_->{exiting} } @{ $j->{processes} };
    return $p && $p->{pid};
}

sub trend {
    my ($j, $pid, $series) = @_;
    my ($p) = grep { $_->{pid} == $pid } @{ $j->{trends} };
    my ($t) = grep { $_->{series} eq $series } @{ $p->{trends} // [] };
    return $t;
}

# --- samples, one per interval -------------------------------------------------
sleep 6;
{
    my ($j) = $t->get_json($port, '/memory_status?history=1');
    my $h = $j->{history};
    ok($h, '?history=1: history');
    is($h->{interval_ms}, 1000, 'interval_ms 1000');
    is($h->{capacity}, $CAPACITY, "capacity $CAPACITY");
    is(scalar @{ $h->{reloads_at_ms} }, 1, 'one configuration load so far');
    my @workers = grep { $_->{role} eq 'worker' } @{ $j->{processes} };
    is(scalar @{ $h->{processes} }, 2, 'a history for each worker');
    for my $p (@{ $h->{processes} }) {
        my @s = @{ $p->{samples} };
        my $alive_s = (time * 1000 - $p->{started_at_ms}) / 1000;
        # The first sample 200 ms after the start, then one a second.
        cmp_ok(abs(@s - int($alive_s - 0.2 + 1)), '<=', 1, "pid $p->{pid}: " . scalar(@s) . " samples in $alive_s s");
        my @gaps = map { $s[$_]{at_ms} - $s[$_ - 1]{at_ms} } 1 .. $#s;
        ok(!grep({ $_ < 800 || $_ > 1500 } @gaps), "pid $p->{pid}: one a second (@gaps ms)");
        ok(!grep({ !defined $_->{pss_bytes} } @s[1 .. $#s]), "pid $p->{pid}: each sample with its PSS");
        ok(!grep({ !$_->{owners}{glibc} } @s), "pid $p->{pid}: each sample with its owners");
    }
    my ($plain) = $t->get_json($port, '/memory_status');
    ok(!exists $plain->{history}, 'without ?history=1: no history');
    ok(scalar @{ $plain->{trends} }, 'trends in every answer');
    is(unexpected_errors($plain), 0, 'no source errors');
}

# --- the ring keeps the last memory_status_history samples ------------------------
sleep($CAPACITY + 1 - (time - $started)) if time - $started < $CAPACITY + 1;
{
    my ($j) = $t->get_json($port, '/memory_status?history=1');
    is(scalar @{ $_->{samples} }, $CAPACITY, "pid $_->{pid}: the last $CAPACITY samples") for @{ $j->{history}{processes} };
    SKIP: {
        skip $NO_LUA, 15 unless $LUA;
        my $grower = worker_pid($j, 1);
        my $idle = worker_pid($j, 0);
        my $gc = trend($j, $grower, 'lua_http_gc');
        ok($gc, 'a trend of the growing heap') or diag explain $j->{trends};
        cmp_ok(abs($gc->{bytes_per_hour} - $RATE_PER_HOUR), '<=', 0.1 * $RATE_PER_HOUR,
            "worker 1's heap: $gc->{bytes_per_hour} bytes per hour, within 10% of $RATE_PER_HOUR");
        cmp_ok($gc->{r_squared}, '>', 0.95, "a straight line (R² $gc->{r_squared})");
        my $still = trend($j, $idle, 'lua_http_gc');
        cmp_ok(abs($still->{bytes_per_hour}), '<', 0.01 * $RATE_PER_HOUR, "worker 0's heap: $still->{bytes_per_hour} bytes per hour");
        my @growth = grep { $_->{code} eq 'steady_growth' } @{ $j->{findings} };
        ok((grep { $_->{subject} eq "worker 1 (pid $grower) lua_http_gc" } @growth), 'steady_growth names worker 1\'s heap')
            or diag explain \@growth;
        ok(!grep({ $_->{subject} =~ /pid $idle\b/ } @growth), 'and nothing of worker 0');
        my $text = $t->get($port, '/memory_status?format=prometheus')->{content};
        like($text, qr/^nginx_memory_trend_bytes_per_hour\{pid="$grower",series="lua_http_gc"\} [\d.e+]+$/m, 'Prometheus: the trend');
        like($text, qr/^nginx_memory_finding\{code="steady_growth",severity="warning",subject="worker 1 \(pid $grower\) lua_http_gc"\} 1$/m,
            'Prometheus: the finding');
        # The zones, recorded by one worker: the dict's used bytes grow, capped.
        my ($zt) = grep { $_->{zone} eq 'filling' } @{ $j->{zone_trends} };
        ok($zt, 'a trend of the dict') or diag explain $j->{zone_trends};
        my ($filling) = grep { $_->{name} eq 'filling' } @{ $j->{zones} };
        cmp_ok($zt->{bytes_per_hour}, '>', 100 * 1000 * 3600, "the dict grows $zt->{bytes_per_hour} bytes per hour (100 values of 1000 bytes a second, in 2 KiB slots)");
        is($zt->{cap_bytes}, $filling->{slab}{total_bytes}, 'capped at the dict\'s pages');
        # Its newest sample is at most an interval old: the dict grew since by a tick at most.
        cmp_ok($zt->{last_bytes}, '<=', $filling->{slab}{used_bytes}, "its last value $zt->{last_bytes}: at most the used bytes now");
        cmp_ok($zt->{last_bytes}, '>=', $filling->{slab}{used_bytes} - 2 * 256 * 1024, 'and at most a tick or two behind');
        my ($zh) = grep { $_->{name} eq 'filling' } @{ $j->{history}{zones} };
        is(scalar @{ $zh->{samples} }, $CAPACITY, "?history=1: the dict's last $CAPACITY samples");
        ok(!grep({ $_->{subject} =~ /filling|shm/ } @growth), 'a zone filling is never steady_growth');
    }
    my $html = $t->get($port, '/memory_status?format=html')->{content};
    like($html, qr{<section id="history">.*<svg class="spark"}s, 'HTML: a line per owner');
    like($html, qr{counted once \(PSS\)</td><td><svg class="spark"}, 'HTML: the server total');
    SKIP: {
        skip $NO_LUA, 1 unless $LUA;
        like($html, qr{zone filling: used</td><td><svg class="spark"}, 'HTML: the dict over time');
    }
}

# --- bounded: at most 360 per ring; a page of the raw samples: history_since= ----
{
    my ($j) = $t->get_json($port, '/memory_status?history=1');
    my $h = $j->{history};
    is($h->{points_max}, 360, 'points_max: 360 samples per ring at most');
    ok(exists $h->{since_ms} && !defined $h->{since_ms}, 'spread over all kept: since_ms null');
    my $p = $h->{processes}[0];
    is($p->{kept}, $CAPACITY, "kept: the ring holds $CAPACITY");
    my $since = $p->{samples}[4]{at_ms};
    my ($k) = $t->get_json($port, "/memory_status?history_since=$since");
    my ($q) = grep { $_->{pid} == $p->{pid} } @{ $k->{history}{processes} };
    is($k->{history}{since_ms}, $since, 'since_ms: the page start asked for');
    is($q->{samples}[0]{at_ms}, $since, 'the page starts at that sample');
    is_deeply([map { $_->{at_ms} } @{ $q->{samples} }[0 .. 3]], [map { $_->{at_ms} } @{ $p->{samples} }[4 .. 7]],
        'then the same samples, in order');
    ok(!grep({ $_->{at_ms} < $since } map { @{ $_->{samples} } } @{ $k->{history}{processes} }, @{ $k->{history}{zones} }),
        'nothing older in any ring, the zones\' too');
    my ($none) = $t->get_json($port, '/memory_status?history_since=' . int(time * 1000 + 600_000));
    ok(!grep({ @{ $_->{samples} } } @{ $none->{history}{processes} }), 'a page after the newest sample: none');
    my $r = $t->get($port, '/memory_status?history_since=x');
    is($r->{status}, 400, 'history_since=x: 400');
    like($r->{content}, qr/^memory_status: bad value "x" for argument "history_since"/, 'with its one-line reason');
}

# --- a reload: marked, the zone kept, the new workers' history after it -----------
{
    my $before = time * 1000;
    $t->reload;
    sleep 2.5;
    my ($j) = $t->get_json($port, '/memory_status?history=1');
    my $h = $j->{history};
    is(scalar @{ $h->{reloads_at_ms} }, 2, 'the reload marked beside the start: the zone was kept');
    cmp_ok($h->{reloads_at_ms}[-1], '>=', $before - 100, 'at the time of the reload');
    my @new = grep { $_->{role} eq 'worker' && $_->{generation} == 2 } @{ $j->{processes} };
    is(scalar @new, 2, 'two workers of generation 2');
    for my $p (@new) {
        my ($ring) = grep { $_->{pid} == $p->{pid} } @{ $h->{processes} };
        ok($ring && @{ $ring->{samples} } >= 1, "new worker $p->{pid}: samples");
        ok(!grep({ $_->{at_ms} < $h->{reloads_at_ms}[-1] } @{ $ring->{samples} }), "new worker $p->{pid}: all after the reload");
    }
}
$t->done_file;

done_testing;
