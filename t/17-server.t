#!/usr/bin/perl

# The whole server from any worker: every answer lists the master, every
# worker, the cache processes, with each one's memory as the kernel gives it
# (checked against /proc/PID/status read here); a reload with a download in
# flight leaves an old worker that is listed as such until it exits; a worker
# killed with -9 is replaced in the list by its successor; master_process off.

use warnings;
use strict;

use FindBin;
use lib "$FindBin::Bin/lib";

use IO::Socket::INET;
use Test::More;
use Time::HiRes qw(sleep time);
use NginxTest qw(proc_status_bytes read_file_text);

my $MiB = 1024 * 1024;

sub conf {
    my (%o) = @_;
    # With Lua, worker 2 holds 64 MiB in its VM from the start, and every
    # worker writes the same 56 MiB of a 64 MiB zone (the zone's pages are
    # then mapped by all four).
    return NginxTest::standard_conf(
        lua => NginxTest::has_lua(),
        main => $o{main},
        workers => $o{workers} // 4,
        connections => 64,
        lua_http => <<'EOF',
    lua_shared_dict filled 64m;
    init_worker_by_lua_block {
        local pad = string.rep("z", 60000)
        for i = 1, 900 do ngx.shared.filled:set("k" .. i, pad) end
        if ngx.worker.id() == 2 then
            held = {}
            local pad = string.rep("w", 65500)
            for i = 1, 1024 do held[i] = pad .. i end
        end
    }
EOF
        http => <<'EOF',
            memory_status_interval 1s;
            proxy_cache_path %%PREFIX%%/cache keys_zone=pages:1m;
EOF
        server => 'location /files/ { root %%PREFIX%%; limit_rate 64k; }',
    );
}

# The nginx processes under the master, as the kernel lists them: pid => title.
sub children {
    my ($master) = @_;
    my %kids;
    for my $dir (glob '/proc/[0-9]*') {
        my $stat = read_file_text("$dir/stat") // next;
        my ($pid, $ppid) = $stat =~ /^(\d+) \(.*\) \S (\d+)/ or next;
        next unless $ppid == $master;
        my $title = read_file_text("$dir/cmdline") // next;
        $title =~ s/[\0 ]+\z//;
        $kids{$pid} = $title;
    }
    return %kids;
}

# Answers until every pid in @want has answered once (a worker answers only
# the requests it accepts); returns them by pid.
sub answers_from {
    my ($t, @want) = @_;
    my %by_pid;
    for (1 .. 400) {
        my ($j) = $t->get_json($t->port(1), '/memory_status');
        $by_pid{ $j->{nginx}{pid} } //= $j;
        last unless grep { !$by_pid{$_} } @want;
    }
    return %by_pid;
}

sub close_to {
    my ($got, $want, $what) = @_;
    my $slack = $want * 0.1 > $MiB ? $want * 0.1 : $MiB;
    cmp_ok(abs(($got // -1e12) - $want), '<=', $slack, "$what: $got within 10% or 1 MiB of $want");
}

# Workers as root: they may read the master's smaps_rollup (detail=full).
my $t = NginxTest->new;
$t->write_file_expand('nginx.conf', conf(main => $> == 0 ? 'user root;' : ''));
$t->write_file('files/big.bin', 'x' x (8 * $MiB));
$t->run;
my $master = $t->master_pid;
$t->wait_for(sub { my %k = children($master); grep { /cache loader/ } values %k }, 'the cache loader');
my %kids = children($master);
my @workers = grep { $kids{$_} eq 'nginx: worker process' } keys %kids;
is(scalar @workers, 4, 'four workers');

# --- every worker answers for the whole server --------------------------------
# A worker publishes its first summary 200 ms after it starts; until then its
# memory is null, and errors says so.
$t->wait_for(sub {
    my ($j) = $t->get_json($t->port(1), '/memory_status');
    4 == grep { $_->{role} eq 'worker' && $_->{memory} } @{ $j->{processes} };
}, 'every worker\'s first summary');
{
    my %answers = answers_from($t, @workers);
    is(scalar(grep { $answers{$_} } @workers), 4, 'each of the four workers answered');
    for my $pid (sort keys %answers) {
        my $j = $answers{$pid};
        my %listed = map { $_->{pid} => $_ } @{ $j->{processes} };
        %kids = children($master);
        is_deeply([sort { $a <=> $b } keys %listed], [sort { $a <=> $b } $master, keys %kids],
            "worker $pid: every process of the server listed, nothing else");
        is($listed{$master}{role}, 'master', "worker $pid: the master");
        is_deeply([sort map { $listed{$_}{worker} } @workers], [0, 1, 2, 3], "worker $pid: worker numbers 0 to 3");
        is($listed{$pid}{worker}, $j->{nginx}{worker}, "worker $pid: its own number, as it says itself");
        my @cache = sort map { $listed{$_}{role} } grep { $kids{$_} =~ /cache/ } keys %kids;
        is_deeply(\@cache, [sort map { $kids{$_} =~ /manager/ ? 'cache_manager' : 'cache_loader' }
            grep { $kids{$_} =~ /cache/ } keys %kids], "worker $pid: the cache processes, by role");
        ok(!grep({ $_->{exiting} } values %listed), "worker $pid: nobody exiting");
        is($j->{server}{generation}, 1, "worker $pid: generation 1");
        is($j->{server}{workers}, 4, "worker $pid: server.workers 4");
        is($j->{server}{old_generation_workers}, 0, "worker $pid: no old generation");
        is($j->{server}{processes}, scalar keys %listed, "worker $pid: server.processes");
        ok(!grep({ $_->{source} =~ /^processes/ } @{ $j->{errors} }), "worker $pid: no process errors");
    }
    # Each worker's own figures, published for the others: every answer has
    # every worker's, fresh within the interval (1 s) and a second.
    for my $pid (sort keys %answers) {
        my $j = $answers{$pid};
        for my $p (grep { $_->{role} eq 'worker' } @{ $j->{processes} }) {
            my $m = $p->{memory};
            ok($m, "worker $pid sees worker $p->{worker}'s memory") or next;
            cmp_ok($m->{age_ms}, '<', 2000, "worker $pid: worker $p->{worker}'s figures $m->{age_ms} ms old");
            ok($m->{breakdown}{glibc} && $m->{breakdown}{text}, "worker $pid: worker $p->{worker}'s owners");
            if ($p->{pid} == $pid) {
                is($m->{age_ms}, 0, "worker $pid: its own entry is this answer's");
                is($m->{breakdown}{glibc}{bytes}, $j->{breakdown}{glibc}{bytes}, "worker $pid: its own glibc, as in its breakdown");
                is($m->{pools}{connections}, $j->{pools}{connections}{count}, "worker $pid: its own connections");
            }
        }
        is($_->{memory}, undef, "worker $pid: no published memory for the $_->{role}")
            for grep { $_->{role} ne 'worker' } @{ $j->{processes} };
        SKIP: {
            skip 'no Lua module', 2 unless NginxTest::has_lua();
            my %vm = map { $_->{worker} => $_->{memory}{lua}{http}{gc_bytes} // 0 } grep { $_->{role} eq 'worker' } @{ $j->{processes} };
            cmp_ok($vm{2}, '>=', 64 * $MiB, "worker $pid sees worker 2's Lua heap of 64 MiB ($vm{2})");
            cmp_ok((sort { $b <=> $a } @vm{0, 1, 3})[0], '<', 8 * $MiB, "worker $pid: the others' heaps are small");
        }
    }
    # An idle worker stays fresh: the one that answers least still published.
    sleep 2.5;
    my ($idle) = $t->get_json($t->port(1), '/memory_status');
    cmp_ok($_->{memory}{age_ms}, '<', 2000, "after 2.5 s idle: worker $_->{worker} published $_->{memory}{age_ms} ms ago")
        for grep { $_->{role} eq 'worker' } @{ $idle->{processes} };

    # Each process's figures against its status, read here right after.
    my ($j) = $t->get_json($t->port(1), '/memory_status');
    for my $p (@{ $j->{processes} }) {
        close_to($p->{resident_bytes}, proc_status_bytes($p->{pid}, 'VmRSS'), "$p->{role} $p->{pid}: resident_bytes");
        is($p->{virtual_bytes}, proc_status_bytes($p->{pid}, 'VmSize'), "$p->{role} $p->{pid}: virtual_bytes");
        cmp_ok(abs(time * 1000 - $p->{started_at_ms}), '<', 120_000, "$p->{role} $p->{pid}: started_at_ms is recent");
    }
}

# --- Prometheus and HTML: the same server from any worker ---------------------
{
    my %kids = children($master);
    my %series;
    for (1 .. 40) {
        my $text = $t->get($t->port(1), '/memory_status?format=prometheus')->{content};
        my @lines = sort map { s/ \d+$//r } grep { /^nginx_memory_server_process_virtual_bytes/ } split /\n/, $text;
        $series{ join "\n", @lines } = 1;
        if ($_ == 1) {
            for my $pid ($master, keys %kids) {
                like($text, qr/^nginx_memory_server_process_resident_bytes\{pid="$pid",role="\w+",worker="\d*",generation="\d+"\} \d+$/m,
                    "Prometheus: process $pid, labelled by itself");
            }
            like($text, qr/^nginx_memory_server_workers 4$/m, 'Prometheus: server_workers 4');
            like($text, qr/^nginx_memory_server_worker_owner_resident_bytes\{pid="\d+",role="worker",worker="0",generation="1",owner="glibc"\} \d+$/m,
                "Prometheus: a worker's published owners");
            like($text, qr/^nginx_memory_server_worker_glibc_in_use_bytes\{pid="\d+",role="worker",worker="3",generation="1"\} \d+$/m,
                "Prometheus: a worker's published glibc");
            like($text, qr/^nginx_memory_server_worker_published_age_seconds\{pid="\d+",role="worker",worker="3",generation="1"\} [\d.]+$/m,
                "Prometheus: a worker's summary age");
            SKIP: {
                skip 'promtool not installed', 1 unless -x '/usr/bin/promtool';
                my $file = $t->prefix . '/server.prom';
                open my $fh, '>', $file or die $!;
                print $fh $text;
                close $fh;
                my $out = qx{/usr/bin/promtool check metrics < $file 2>&1};
                is($?, 0, 'promtool accepts the server series') or diag $out;
            }
        }
    }
    is(scalar keys %series, 1, 'every scrape, whichever worker answered, gives the same process series (labels)');
    my $html = $t->get($t->port(1), '/memory_status?format=html')->{content};
    like($html, qr{<section id="server"><h2>The server: \d+ processes, 4 workers, generation 1</h2>}, 'HTML: the server section');
    like($html, qr{<td>master</td>}, 'HTML: the master listed');
}

# --- the server counted once: the sum of PSS, a zone once -----------------------
# Sum of Pss of the master and every process under it, and of their RSS, read here.
sub outside_sums {
    my %kids = children($master);
    my ($pss_sum, $rss_sum) = (0, 0);
    for my $pid ($master, keys %kids) {
        my $rollup = read_file_text("/proc/$pid/smaps_rollup") // '';
        my ($pss) = $rollup =~ /^Pss:\s+(\d+) kB$/m;
        $pss_sum += ($pss // 0) * 1024;
        $rss_sum += proc_status_bytes($pid, 'VmRSS');
    }
    return ($pss_sum, $rss_sum);
}

sub counted_once_checks {
    my ($j, $depth) = @_;
    my ($pss_here, $rss_here) = outside_sums();
    my $s = $j->{server};
    my $once = $s->{resident_bytes};
    cmp_ok(abs(($once // 0) - $pss_here), '<=', 0.02 * $pss_here,
        "$depth: server.resident_bytes $once within 2% of the sum of Pss read here ($pss_here)");
    ok(defined $once && $once < 0.8 * $rss_here, "$depth: counted once, well under the sum of RSS ($rss_here)");
    is($s->{resident_estimated_bytes}, 0, "$depth: nothing estimated (root workers read the master's PSS)");
    cmp_ok($s->{resident_age_ms}, '<', 2500, "$depth: the oldest figure summed is $s->{resident_age_ms} ms old");
    my $split = 0;
    $split += $_ for values %{ $s->{breakdown} };
    is($split, $once, "$depth: server.breakdown adds up to server.resident_bytes");
    ok($s->{breakdown}{master}, "$depth: the master's share in server.breakdown");
    ok(!grep({ !defined $_->{pss_bytes} } @{ $j->{processes} }), "$depth: every process's pss_bytes known");
    ok(!grep({ $_->{pss_age_ms} > 2500 } @{ $j->{processes} }), "$depth: every pss_bytes at most 2.5 s old");
    SKIP: {
        skip 'no Lua module: no zone filled by every worker', 2 unless NginxTest::has_lua();
        my ($filled) = grep { $_->{name} eq 'filled' } @{ $j->{zones} };
        my $loaded = 0;
        $loaded += $_->{loaded_bytes} // 0 for @{ $j->{zones} };
        cmp_ok($filled->{loaded_bytes}, '>', 50 * $MiB, "$depth: the zone holds $filled->{loaded_bytes} bytes");
        cmp_ok(abs($s->{breakdown}{shm} - $loaded), '<=', 0.05 * $loaded + 2 * $MiB,
            "$depth: server.breakdown.shm $s->{breakdown}{shm}: the zones' loaded bytes ($loaded) once");
        my $per_worker = 0;
        $per_worker += $_->{memory}{breakdown}{shm}{resident_bytes} // 0
            for grep { $_->{role} eq 'worker' } @{ $j->{processes} };
        cmp_ok($per_worker, '>', 3.5 * $filled->{loaded_bytes},
            "$depth: the workers' own shm figures ($per_worker) count it four times");
    }
}

{
    # Every worker filled the zone at start; one interval later each has
    # walked its page tables again with all four mapping the zone.
    sleep 2.5;
    my ($plain) = $t->get_json($t->port(1), '/memory_status');
    counted_once_checks($plain, 'default depth');
    my ($full) = $t->get_json($t->port(1), '/memory_status?detail=full');
    counted_once_checks($full, 'detail=full');
    ok(!grep({ $_->{pss_age_ms} != 0 } grep { $_->{pid} == $master || $_->{pid} == $full->{nginx}{pid} } @{ $full->{processes} }),
        'detail=full: the master\'s and the answering worker\'s PSS read by this answer');
    my $text = $t->get($t->port(1), '/memory_status?format=prometheus')->{content};
    like($text, qr/^nginx_memory_server_resident_bytes \d+$/m, 'Prometheus: server_resident_bytes');
    like($text, qr/^nginx_memory_server_owner_resident_bytes\{owner="shm"\} \d+$/m, 'Prometheus: the server by owner');
    like($text, qr/^nginx_memory_server_process_pss_bytes\{pid="$master",role="master",worker="",generation="1"\} \d+$/m,
        'Prometheus: the master\'s PSS');
    my $html = $t->get($t->port(1), '/memory_status?format=html')->{content};
    like($html, qr{<svg id="server-pie"}, 'HTML: the server pie');
    like($html, qr{data-name="master"}, 'HTML: the master\'s slice');
}

# --- a reload with a download in flight: the old worker stays, listed -----------
{
    my $client = IO::Socket::INET->new(PeerAddr => '127.0.0.1:' . $t->port(1), Timeout => 10) or die $!;
    print $client "GET /files/big.bin HTTP/1.1\r\nHost: x\r\n\r\n";
    sysread $client, my $buf, 1024;
    # The worker that serves it: the one with a connection in the file's download.
    kill 'HUP', $master;
    my $old;
    $t->wait_for(sub {
        my %k = children($master);
        ($old) = grep { $k{$_} =~ /shutting down/ } keys %k;
        my $new = grep { $k{$_} eq 'nginx: worker process' } keys %k;
        $old && $new == 4;
    }, 'an old worker shutting down beside four new ones');
    my ($j) = $t->get_json($t->port(1), '/memory_status');
    my ($listed) = grep { $_->{pid} == $old } @{ $j->{processes} };
    ok($listed, 'the old worker is listed');
    is($listed->{exiting}, JSON::PP::true, 'exiting: true');
    is($listed->{generation}, 1, 'of generation 1');
    is($j->{server}{generation}, 2, 'the server is at generation 2');
    is(scalar(grep { $_->{role} eq 'worker' && !$_->{exiting} && $_->{generation} == 2 } @{ $j->{processes} }), 4,
        'four workers of generation 2');
    is($j->{server}{old_generation_workers}, 1, 'server.old_generation_workers 1');
    is($j->{server}{workers}, 4, 'server.workers 4');
    is($j->{server}{old_generation_resident_bytes}, $listed->{resident_bytes}, 'its memory, in server.old_generation_resident_bytes');
    cmp_ok($j->{server}{oldest_exiting_age_ms}, '>', 0, 'server.oldest_exiting_age_ms');
    close $client;
    $t->wait_for(sub { !kill 0, $old }, 'the old worker to exit');
    my ($after) = $t->get_json($t->port(1), '/memory_status');
    ok(!grep({ $_->{pid} == $old } @{ $after->{processes} }), 'once it exited it is gone');
    is($after->{server}{old_generation_workers}, 0, 'no old generation left');
    is($after->{server}{oldest_exiting_age_ms}, undef, 'oldest_exiting_age_ms null');
}

# --- kill -9: the successor replaces the dead worker -------------------------
{
    my ($victim) = sort { $a <=> $b } $t->worker_pids;
    my ($j0) = $t->get_json($t->port(1), '/memory_status');
    my ($was) = grep { $_->{pid} == $victim } @{ $j0->{processes} };
    kill 'KILL', $victim;
    $t->wait_for(sub { my @w = $t->worker_pids; @w == 4 && !grep { $_ == $victim } @w }, 'a respawned worker');
    my ($j) = $t->get_json($t->port(1), '/memory_status');
    ok(!grep({ $_->{pid} == $victim } @{ $j->{processes} }), 'the killed worker is gone from the list');
    my @same = grep { $_->{role} eq 'worker' && defined $_->{worker} && $_->{worker} == $was->{worker} } @{ $j->{processes} };
    is(scalar @same, 1, "one worker numbered $was->{worker}, its successor");
    isnt($same[0]{pid}, $victim, 'with a new pid');
    is($j->{server}{workers}, 4, 'still four workers');
    $t->wait_for(sub {
        my ($k) = $t->get_json($t->port(1), '/memory_status');
        my ($s) = grep { $_->{pid} == $same[0]{pid} } @{ $k->{processes} };
        $s && $s->{memory};
    }, "the successor's first summary");
    pass('the successor publishes');
    $t->done_file(allow => [qr/worker process $victim exited on signal 9/]);
}

# --- master_process off: the one process ---------------------------------------
{
    my $s = NginxTest->new;
    $s->write_file_expand('nginx.conf', conf(workers => 1, main => 'master_process off;'));
    $s->run(single => 1);
    my ($j) = $s->get_json($s->port(1), '/memory_status');
    is(scalar @{ $j->{processes} }, 1, 'single: one process') or diag explain $j->{processes};
    is($j->{processes}[0]{role}, 'single', 'single: role single');
    is($j->{processes}[0]{pid}, $j->{nginx}{pid}, 'single: itself');
    is($j->{server}{workers}, 1, 'single: server.workers 1');
    $s->stop;
}

# --- workers as www-data: the root master is still listed --------------------
SKIP: {
    skip 'not root: cannot run workers as www-data', 8 unless $> == 0 && getpwnam('www-data');
    my $w = NginxTest->new;
    $w->write_file_expand('nginx.conf', conf(workers => 1, main => 'user www-data;'));
    $w->run;
    my ($j) = $w->get_json($w->port(1), '/memory_status');
    my ($m) = grep { $_->{role} eq 'master' } @{ $j->{processes} };
    ok($m && $m->{resident_bytes}, "www-data worker: the root master's memory read");
    is($j->{server}{workers}, 1, 'www-data worker: server.workers 1');
    ok(!grep({ $_->{source} =~ /^processes/ } @{ $j->{errors} }), 'www-data worker: no process errors');
    my ($full) = $w->get_json($w->port(1), '/memory_status?detail=full');
    my ($fm) = grep { $_->{role} eq 'master' } @{ $full->{processes} };
    is($fm->{pss_bytes}, undef, "www-data worker: the root master's pss_bytes is null");
    my ($why) = grep { $_->{source} eq "processes.$fm->{pid}" } @{ $full->{errors} };
    like($why->{error} // '', qr{^/proc/$fm->{pid}/smaps_rollup: }, 'with its reason');
    cmp_ok($full->{server}{resident_estimated_bytes}, '>', 0, 'the master\'s share estimated');
    is($full->{server}{breakdown}{estimated}, $full->{server}{resident_estimated_bytes}, 'shown as such in server.breakdown');
    my ($said) = grep { $_->{source} eq 'server.resident_bytes' } @{ $full->{errors} };
    like($said->{error} // '', qr/no PSS known for $fm->{pid} \(master\): estimated as RssAnon/, 'and errors says how');
    $w->done_file;
}

done_testing;
