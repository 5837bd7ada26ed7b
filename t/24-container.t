#!/usr/bin/perl

# The container's memory, reconciled: nginx started inside a memory cgroup of
# the test's own, each part of the group's charge provoked for real (page
# cache from a 200 MB static file served three times and from a proxy_cache
# filled from a local upstream, a proxy_cache on a tmpfs, a process in the
# group that is not nginx, 2,000 connections that do not read their
# responses, an OOM kill) and checked against the group's own files, read by the test. The
# parts add up to the group's usage exactly; an unreadable group is null with
# its errors entry while the rest answers.

use warnings;
use strict;

use FindBin;
use lib "$FindBin::Bin/lib";

use File::Find ();
use IO::Socket::INET;
use Socket ();
use JSON::PP ();
use Test::More;
use Time::HiRes qw(sleep time);
use NginxTest qw(read_file_text);
use Cgroup qw(make_cgroup write_text in_cgroup cgroup_number cgroup_stat);

my $MiB = 1024 * 1024;

plan skip_all => 'the container tests move processes between cgroups: root only' if $> != 0;
my ($dir, $limit_file, $why) = make_cgroup();
plan skip_all => "no memory cgroup to create here: $why" unless $dir;
my $v1 = $limit_file eq 'memory.limit_in_bytes';
my @made = ($dir);
END { for my $d (reverse @made) { rmdir $d if $d && -d $d } }

# Within 5% of what the test read itself, or 1 MiB.
sub near {
    my ($got, $want, $name) = @_;
    my $slack = abs($want) * 0.05;
    $slack = $MiB if $slack < $MiB;
    ok(defined $got && abs($got - $want) <= $slack, "$name: $got, the group's files say $want")
        or diag "off by " . (($got // 0) - $want);
}

sub part {
    my ($c, $name) = @_;
    my ($p) = grep { $_->{part} eq $name } @{ $c->{parts} };
    return $p ? $p->{bytes} : undef;
}

sub parts_add_up {
    my ($c, $when) = @_;
    my $sum = 0;
    $sum += $_->{bytes} for @{ $c->{parts} };
    is($sum, $c->{usage_bytes}, "$when: the parts add up to usage exactly ($c->{usage_bytes})");
}

# An answer fresher than the group's one-second reuse, and the group's own
# stat read right after it.
sub fresh_answer {
    my ($t) = @_;
    sleep 1.1;
    my ($j) = $t->get_json($t->port(1), '/memory_status');
    return ($j, $j->{container}, cgroup_stat($dir));
}

# A process's RssAnon in bytes, as /proc/PID/status says (0 once it is gone).
sub rss_anon {
    my ($pid) = @_;
    my ($kib) = (read_file_text("/proc/$pid/status") // '') =~ /^RssAnon:\s+(\d+) kB/m;
    return ($kib // 0) * 1024;
}

# Waits (10 s at most) until a process holds BYTES of anonymous memory.
sub wait_anon {
    my ($pid, $bytes) = @_;
    for (1 .. 100) {
        last if rss_anon($pid) >= $bytes;
        sleep 0.1;
    }
}

# A whole response read and dropped: its body's length.
sub download {
    my ($port, $path) = @_;
    my $s = IO::Socket::INET->new(PeerAddr => "127.0.0.1:$port", Timeout => 30) or die "connect: $!";
    print $s "GET $path HTTP/1.0\r\nHost: localhost\r\n\r\n";
    my ($bytes, $head, $buf) = (0, '', '');
    while (sysread($s, $buf, 1 << 20)) {
        if (defined $head) {
            $head .= $buf;
            my $end = index($head, "\r\n\r\n");
            next if $end < 0;
            $bytes = length($head) - $end - 4;
            undef $head;
        } else {
            $bytes += length $buf;
        }
    }
    return $bytes;
}

write_text("$dir/$limit_file", 1024 * $MiB);
# v1 counts TCP buffers once the group's TCP accounting is on.
write_text("$dir/memory.kmem.tcp.limit_in_bytes", 2048 * $MiB) if $v1;

my $t = NginxTest->new;
$t->write_file('www/small.html', "ok\n");
$t->write_standard_conf(
    connections => 4096,
    main => 'worker_rlimit_nofile 8192;',
    http => [
        'memory_status_interval 1s;',
        'proxy_cache_path %%PREFIX%%/cache keys_zone=disk_cache:1m max_size=1g use_temp_path=off;',
        'proxy_cache_path %%PREFIX%%/tmpfs keys_zone=tmpfs_cache:1m max_size=1g use_temp_path=off;',
    ],
    server => <<'EOF',
        location /files/ { alias %%PREFIX%%/www/; }
        location /cached/ {
            proxy_pass http://127.0.0.1:%%PORT_2%%/origin/;
            proxy_cache disk_cache;
            proxy_cache_valid 200 1h;
        }
        location /tmpfs-cached/ {
            proxy_pass http://127.0.0.1:%%PORT_2%%/origin/;
            proxy_cache tmpfs_cache;
            proxy_cache_valid 200 1h;
        }
EOF
    servers => <<'EOF',
        server {
            listen 127.0.0.1:%%PORT_2%%;
            location /origin/ { alias %%PREFIX%%/origin/; }
        }
EOF
);
# The big file is written past the page cache, so the group is charged for
# it only when nginx reads it.
my $big = $t->prefix . '/www/big.bin';
system("dd if=/dev/zero of=$big bs=1M count=200 oflag=direct status=none") == 0 or die "dd: $?";
system("dd if=/dev/urandom of=" . $t->prefix . "/www/reply.bin bs=64K count=1 status=none") == 0 or die "dd: $?";
# The upstream's files, 20 of 4 MiB, written past the page cache too.
my $origin = $t->prefix . '/origin';
mkdir $origin or die "$origin: $!";
for my $n (1 .. 20) {
    system("dd if=/dev/zero of=$origin/$n.bin bs=1M count=4 oflag=direct status=none") == 0 or die "dd: $?";
}
# A proxy_cache on a tmpfs mounted for the test: its files are shmem charged
# to the group of the worker that writes them.
my $tmpfs = $t->prefix . '/tmpfs';
mkdir $tmpfs or die "$tmpfs: $!";
my $mounted = system('mount', '-t', 'tmpfs', '-o', 'size=256m', 'tmpfs', $tmpfs) == 0;
END { system('umount', '-l', $tmpfs) if $mounted }
$t->run(prefix => [in_cgroup($dir)]);
my ($worker) = $t->worker_pids;

# --- the section and its sums ---------------------------------------------------
{
    my ($j, $c, $stat) = fresh_answer($t);
    ok($c, 'container is in the answer') or diag explain $j->{errors};
    is($c->{cgroup_version}, $v1 ? 1 : 2, 'the cgroup version');
    my ($base) = $dir =~ m{([^/]+)$};
    like($c->{path}, qr{/\Q$base\E$}, "the group nginx runs in: $c->{path}");
    is($c->{limit_bytes}, 1024 * $MiB, 'the limit, as written');
    parts_add_up($c, 'at start');
    near($c->{usage_bytes}, cgroup_number($dir, $v1 ? 'memory.usage_in_bytes' : 'memory.current'), 'usage');
    my $inactive = $stat->{$v1 ? 'total_inactive_file' : 'inactive_file'};
    near($c->{working_set_bytes}, $c->{usage_bytes} - $inactive, 'working set: usage less inactive file');
    ok(!grep({ $_->{source} eq 'container' } @{ $j->{errors} }), 'no container error');
    is($c->{oom}{kills_since_start}, 0, 'no OOM kill since nginx started');
    cmp_ok(part($c, 'nginx_anonymous'), '>', 0, 'nginx holds anonymous memory in the group');
    # nginx's parts against what the test reads of nginx's processes and the
    # group: its anonymous pages counted once lie between the largest
    # process's RssAnon and their sum; its files are mapped file pages.
    my @anon = map { rss_anon($_) } ($t->master_pid, $t->worker_pids);
    my ($largest) = sort { $b <=> $a } @anon;
    my $sum = 0;
    $sum += $_ for @anon;
    cmp_ok(part($c, 'nginx_anonymous'), '>=', $largest * 0.95, "nginx_anonymous: at least the largest process's RssAnon ($largest)");
    cmp_ok(part($c, 'nginx_anonymous'), '<=', $sum * 1.05, "nginx_anonymous: at most the processes' RssAnon summed ($sum)");
    cmp_ok(part($c, 'nginx_files'), '<=', $stat->{$v1 ? 'total_mapped_file' : 'file_mapped'},
        "nginx_files: at most the group's mapped file pages");
    near(part($c, $v1 ? 'kernel' : 'kernel_stacks'), $v1 ? cgroup_number($dir, 'memory.kmem.usage_in_bytes') : $stat->{kernel_stack},
        $v1 ? 'kernel: memory.kmem.usage_in_bytes' : 'kernel_stacks: memory.stat kernel_stack');
}

# --- page cache: a 200 MB static file served three times -------------------------
{
    my (undef, $before) = fresh_answer($t);
    my $cache_before = part($before, 'page_cache_active') + part($before, 'page_cache_inactive');
    is(download($t->port(1), '/files/big.bin'), 200 * $MiB, 'the 200 MB file, served') for 1 .. 3;
    my ($j, $c, $stat) = fresh_answer($t);
    my $cache = part($c, 'page_cache_active') + part($c, 'page_cache_inactive');
    cmp_ok($cache - $cache_before, '>=', 190 * $MiB, "page cache grew by " . ($cache - $cache_before) . " bytes");
    my ($active, $inactive) = $v1 ? @$stat{qw(total_active_file total_inactive_file)} : @$stat{qw(active_file inactive_file)};
    near($cache, $active + $inactive - part($c, 'nginx_files'), 'page cache: active and inactive file less nginx_files');
    parts_add_up($c, 'with the page cache');

    # A limit just above usage: the working set is near it.
    my $tight = int($c->{usage_bytes} / 0.95 / 4096) * 4096;
    write_text("$dir/$limit_file", $tight);
    ($j, $c) = fresh_answer($t);
    my ($near) = grep { $_->{code} eq 'working_set_near_limit' } @{ $j->{findings} };
    ok($near, "working_set_near_limit fires under a limit of $tight") or diag explain $j->{findings};
    is($near->{evidence}{working_set_bytes}, $c->{working_set_bytes}, "its evidence: the working set");
    # A roomier one: the active page cache is still a fifth of it.
    write_text("$dir/$limit_file", 768 * $MiB);
    ($j, $c) = fresh_answer($t);
    ok(!grep({ $_->{code} eq 'working_set_near_limit' } @{ $j->{findings} }), 'not under a roomy limit');
    my ($cached) = grep { $_->{code} eq 'page_cache_in_usage' } @{ $j->{findings} };
    ok($cached, 'page_cache_in_usage fires: active page cache over 20% of the limit') or diag explain $j->{findings};
    is($cached->{evidence}{page_cache_active_bytes}, part($c, 'page_cache_active'), 'its evidence: the active page cache');
}

# The bytes of the files under $dir, each rounded up to whole pages.
sub bytes_under {
    my ($dir) = @_;
    my $bytes = 0;
    File::Find::find(sub { $bytes += (int(((-s $_) + 4095) / 4096) * 4096) if -f $_ }, $dir);
    return $bytes;
}

# Each of the upstream's 20 files fetched through a cache: how many came whole.
sub fill_cache {
    my ($location) = @_;
    return scalar grep { download($t->port(1), "$location$_.bin") == 4 * $MiB } 1 .. 20;
}

# --- page cache: a proxy_cache filled from a local upstream ----------------------
{
    my (undef, $before) = fresh_answer($t);
    my $cache_before = part($before, 'page_cache_active') + part($before, 'page_cache_inactive');
    is(fill_cache('/cached/'), 20, 'the upstream\'s 20 files of 4 MiB, served through the disk cache');
    my $on_disk = bytes_under($t->prefix . '/cache');
    cmp_ok($on_disk, '>=', 80 * $MiB, "the cache holds them: $on_disk bytes");
    my ($j, $c, $stat) = fresh_answer($t);
    my $cache = part($c, 'page_cache_active') + part($c, 'page_cache_inactive');
    # The upstream's reads and the cache's writes both go through the page cache.
    my $want = 80 * $MiB + $on_disk;
    cmp_ok($cache - $cache_before, '>=', 0.9 * $want,
        'page cache grew by ' . ($cache - $cache_before) . " bytes: the upstream's files and the cache's, $want");
    my ($active, $inactive) = $v1 ? @$stat{qw(total_active_file total_inactive_file)} : @$stat{qw(active_file inactive_file)};
    near($cache, $active + $inactive - part($c, 'nginx_files'), 'page cache with the proxy_cache');
    parts_add_up($c, 'with the proxy_cache');
}

# --- shmem: a proxy_cache on a tmpfs ----------------------------------------------
SKIP: {
    skip 'no tmpfs could be mounted here', 5 unless $mounted;
    my (undef, $before) = fresh_answer($t);
    is(fill_cache('/tmpfs-cached/'), 20, 'the same 20 files, served through the tmpfs cache');
    my $on_tmpfs = bytes_under($tmpfs);
    cmp_ok($on_tmpfs, '>=', 80 * $MiB, "the tmpfs holds them: $on_tmpfs bytes");
    my ($j, $c, $stat) = fresh_answer($t);
    near(part($c, 'shmem_other') - part($before, 'shmem_other'), $on_tmpfs, 'shmem_other grew by the tmpfs cache');
    near(part($c, 'shmem_other'), $stat->{$v1 ? 'total_shmem' : 'shmem'} - part($c, 'nginx_shared_memory'),
        "shmem_other: the group's shmem less nginx's zones");
    parts_add_up($c, 'with the tmpfs cache');
}

# --- a process in the group that is not nginx ------------------------------------
{
    my $pid = fork // die "fork: $!";
    if (!$pid) {
        exec(in_cgroup($dir), 'perl', '-e', '$x = "a" x 60e6; sleep 60') or exit 1;
    }
    wait_anon($pid, 60e6);
    my ($j, $c) = fresh_answer($t);
    my ($other) = grep { $_->{pid} == $pid } @{ $c->{other_processes} };
    ok($other, "the perl process ($pid) is listed") or diag explain $c->{other_processes};
    is($other->{comm}, 'perl', 'by its name');
    near($other->{resident_anon_bytes}, rss_anon($pid), 'its anonymous memory');
    cmp_ok(part($c, 'other_processes'), '>=', 60e6, 'in the other_processes part');
    ok(!grep({ $_->{pid} == $worker } @{ $c->{other_processes} }), 'nginx is not among them');
    parts_add_up($c, 'with another process');
    kill 'KILL', $pid;
    waitpid $pid, 0;
}

# --- a process in a group below nginx's: its charge is in the group's too --------
{
    my $sub = "$dir/sub";
    mkdir $sub or die "$sub: $!";
    push @made, $sub;
    my $pid = fork // die "fork: $!";
    if (!$pid) {
        exec(in_cgroup($sub), 'perl', '-e', '$x = "b" x 40e6; sleep 60') or exit 1;
    }
    wait_anon($pid, 40e6);
    my ($j, $c) = fresh_answer($t);
    my ($other) = grep { $_->{pid} == $pid } @{ $c->{other_processes} };
    ok($other, "the perl process in $sub ($pid) is listed") or diag explain $c->{other_processes};
    cmp_ok(part($c, 'other_processes'), '>=', 40e6, 'in the other_processes part');
    parts_add_up($c, 'with a process in a child group');
    kill 'KILL', $pid;
    waitpid $pid, 0;
    for (1 .. 50) { last if rmdir $sub; sleep 0.1 }
}

# --- socket buffers: 2,000 connections that do not read their 64 KiB ---------------
{
    my @held;
    # A client's small receive buffer, as a slow client far away: on loopback a
    # default one would take the whole 64 KiB and leave nginx's socket empty.
    my $peer = Socket::pack_sockaddr_in($t->port(1), Socket::inet_aton('127.0.0.1'));
    for (1 .. 2000) {
        my $s = IO::Socket::INET->new(Proto => 'tcp') or last;
        $s->setsockopt(Socket::SOL_SOCKET(), Socket::SO_RCVBUF(), 4096) or last;
        $s->connect($peer) or last;
        print $s "GET /files/reply.bin HTTP/1.1\r\nHost: localhost\r\n\r\n";
        push @held, $s;
    }
    is(scalar @held, 2000, '2,000 connections open');
    sleep 1;
    my ($j, $c, $stat) = fresh_answer($t);
    cmp_ok($c->{sockets}{nginx_connections}, '>=', 2000, "nginx holds $c->{sockets}{nginx_connections} connections");
    cmp_ok($c->{sockets}{tcp_in_use}, '>=', 4000, "TCP sockets in use in the namespace: $c->{sockets}{tcp_in_use}");
    my $buffers = $v1 ? $c->{tcp_buffers_outside_usage_bytes} : part($c, 'socket_buffers');
    my $own = $v1 ? cgroup_number($dir, 'memory.kmem.tcp.usage_in_bytes') : $stat->{sock};
    near($buffers, $own, $v1 ? 'TCP buffers beside usage (v1)' : 'socket buffers (v2 sock)');
    cmp_ok($buffers, '>', 16 * $MiB, "the kernel buffers $buffers bytes for the connections");
    my ($large) = grep { $_->{code} eq 'socket_buffers_large' } @{ $j->{findings} };
    ok($large, 'socket_buffers_large fires') or diag explain $j->{findings};
    is($large->{evidence}{socket_buffers_bytes}, $buffers, 'its evidence: the buffers');
    note('the container section the README walks through: ' . JSON::PP->new->canonical->encode($c));
    my $text = $t->get($t->port(1), '/memory_status?format=prometheus')->{content};
    like($text, qr/^nginx_memory_container_part_bytes\{cgroup_version="[12]",part="page_cache_active"\} -?\d+$/m, 'Prometheus: the parts');
    like($text, qr/^nginx_memory_container_usage_bytes\{cgroup_version="[12]"\} \d+$/m, 'Prometheus: usage');
    like($text, qr/^# TYPE nginx_memory_container_oom_kills_total counter$/m, 'Prometheus: OOM kills, a counter');
    my $html = $t->get($t->port(1), '/memory_status?format=html')->{content};
    like($html, qr{<section id="container"><h2>The container: <span class="size"[^>]*>[^<]+</span> charged of a limit of }, 'HTML: the container section, with its limit');
    like($html, qr/<svg[^>]*id="container-pie"/, 'HTML: the pie of its parts');
    like($html, qr/headroom to the limit/, 'HTML: the headroom drawn as the last slice');
    like($html, qr/TCP buffers beside its usage \(v1\)|socket_buffers/, 'HTML: the socket buffers');
    close $_ for @held;
}

# --- history: the group's usage and working set sampled with the rest --------------
{
    my ($j) = $t->get_json($t->port(1), '/memory_status?history=1');
    my ($ring) = grep { $_->{pid} == $worker } @{ $j->{history}{processes} };
    my @usage = grep { defined } map { $_->{container_usage_bytes} } @{ $ring->{samples} };
    cmp_ok(scalar @usage, '>=', 5, scalar(@usage) . ' samples of the container usage in the worker\'s ring');
    ok(defined $ring->{samples}[-1]{container_working_set_bytes}, 'and of its working set');
    my ($trends) = grep { $_->{pid} == $worker } @{ $j->{trends} };
    my ($fit) = grep { $_->{series} eq 'container_usage' } @{ $trends->{trends} };
    ok($fit && $fit->{samples} >= 3, 'container_usage is fitted') or diag explain $trends;
    ok(!grep({ $_->{code} eq 'steady_growth' && $_->{message} =~ /container/ } @{ $j->{findings} }),
        'the page cache growing is no steady_growth');
}

$t->done_file;

# --- an unreadable group: null, with its errors entry ------------------------------
{
    my $u = NginxTest->new;
    $u->write_standard_conf;
    # A mount namespace of its own without the memory hierarchy: /proc says
    # which group, and its files cannot be read.
    my @hide = ('unshare', '-m', 'sh', '-c', 'umount -l /sys/fs/cgroup/memory 2>/dev/null; umount -l /sys/fs/cgroup 2>/dev/null; exec "$@"', 'sh');
    $u->run(prefix => \@hide);
    my ($j) = $u->get_json($u->port(1), '/memory_status');
    is($j->{container}, undef, 'an unreadable group: container is null');
    my ($e) = grep { $_->{source} eq 'container' } @{ $j->{errors} };
    ok($e, "with its errors entry: " . ($e ? $e->{error} : 'none'));
    ok($j->{process}{resident_bytes} && $j->{breakdown}, 'the rest answers');
    $u->done_file;
}

# --- a container's layout: only its own group mounted at the top -----------------
SKIP: {
    my ($own, $file, $no) = make_cgroup();
    skip "no second memory cgroup: $no", 5 unless $own;
    skip 'the bind-mounted layout is cgroup v1\'s here', 5 unless $file eq 'memory.limit_in_bytes';
    push @made, $own;
    write_text("$own/$file", 512 * $MiB);
    my $d = NginxTest->new;
    $d->write_standard_conf;
    # As Docker and Kubernetes do on v1: /proc/self/cgroup names the host's
    # path, and the memory hierarchy's mount shows that group as its top.
    $d->run(prefix => ['unshare', '-m', '--propagation', 'private', 'sh', '-c',
        qq{echo \$\$ > '$own/cgroup.procs' && mount --bind '$own' /sys/fs/cgroup/memory && exec "\$@"}, 'sh']);
    sleep 1.1;
    my ($j) = $d->get_json($d->port(1), '/memory_status');
    my $c = $j->{container};
    ok($c, 'the group is found below its mount\'s top') or diag explain $j->{errors};
    my ($base) = $own =~ m{([^/]+)$};
    like($c->{path} // '', qr{/\Q$base\E$}, "named as /proc/self/cgroup names it: " . ($c->{path} // 'none'));
    is($c->{limit_bytes}, 512 * $MiB, 'its limit');
    near($c->{usage_bytes}, cgroup_number($own, 'memory.usage_in_bytes'), 'its usage');
    parts_add_up($c, 'in the container layout') if $c;
    $d->done_file;
}

# --- master_process off under a supervisor: the supervisor is not nginx's ---------
SKIP: {
    my ($sup, $file, $no) = make_cgroup();
    skip "no second memory cgroup: $no", 3 unless $sup;
    push @made, $sup;
    my $s = NginxTest->new;
    $s->write_standard_conf(main => "master_process off;\ndaemon off;");
    # A supervisor (an entrypoint script, say) holding 80 MB, with nginx its child.
    my $supervisor = fork // die "fork: $!";
    if (!$supervisor) {
        exec(in_cgroup($sup), 'perl', '-e', '$x = "p" x 80e6; my $n = fork // die; if (!$n) { exec @ARGV } waitpid $n, 0',
            $s->nginx_cmd) or exit 1;
    }
    my $ok = eval { $s->wait_for_ports; 1 };
    ok($ok, 'nginx runs in the foreground under its supervisor') or diag $@;
    wait_anon($supervisor, 80e6);
    sleep 1.1;
    my ($j) = $ok ? $s->get_json($s->port(1), '/memory_status') : ();
    my ($listed) = grep { $_->{pid} == $supervisor } @{ $j->{container}{other_processes} // [] };
    ok($listed, "the supervisor ($supervisor) is one of the group's others") or diag explain $j->{container};
    cmp_ok(part($j->{container}, 'other_processes') // 0, '>=', 80e6, 'its 80 MB in other_processes, not unexplained');
    $s->{running} = 1;    # started here, not by run: stop QUITs the pid file's process
    $s->stop;
    waitpid $supervisor, 0;
}

# --- a limit on the parent, shared with a sibling ---------------------------------
SKIP: {
    my ($parent, $file, $no) = make_cgroup();
    skip "no second memory cgroup: $no", 6 unless $parent;
    push @made, $parent, "$parent/nginx", "$parent/side";
    mkdir "$parent/$_" or die "$parent/$_: $!" for qw(nginx side);
    write_text("$parent/$file", 256 * $MiB);
    my $side = fork // die "fork: $!";
    if (!$side) {
        exec(in_cgroup("$parent/side"), 'perl', '-e', '$x = "s" x 100e6; sleep 60') or exit 1;
    }
    my $p = NginxTest->new;
    $p->write_standard_conf;
    $p->run(prefix => [in_cgroup("$parent/nginx")]);
    wait_anon($side, 100e6);
    sleep 1.1;
    my ($j) = $p->get_json($p->port(1), '/memory_status');
    my $c = $j->{container};
    is($c->{limit_bytes}, 256 * $MiB, 'the parent\'s limit binds');
    my ($base) = $parent =~ m{([^/]+)$};
    like($c->{limit_group}{path} // '', qr{/\Q$base\E$}, 'on the parent: ' . ($c->{limit_group}{path} // 'none'));
    near($c->{limit_group}{usage_bytes}, cgroup_number($parent, $v1 ? 'memory.usage_in_bytes' : 'memory.current'),
        'the parent\'s usage, with the sibling');
    cmp_ok($c->{limit_group}{working_set_bytes}, '>', $c->{working_set_bytes} + 90e6, 'its working set counts the sibling\'s 100 MB');
    my $text = $p->get($p->port(1), '/memory_status?format=prometheus')->{content};
    like($text, qr/^nginx_memory_container_limit_group_working_set_bytes\{cgroup_version="[12]"\} \d+$/m, 'Prometheus: the parent\'s working set');
    my $html = $p->get($p->port(1), '/memory_status?format=html')->{content};
    like($html, qr/the limiting group&#39;s other members|the limiting group's other members/, 'HTML: the sibling\'s share drawn');
    $p->done_file;
    kill 'KILL', $side;
    waitpid $side, 0;
    for my $d ("$parent/side", "$parent/nginx") { for (1 .. 50) { last if rmdir $d; sleep 0.1 } }
}

# --- an OOM kill: a Lua location past a tight limit ------------------------------
SKIP: {
    skip "Debian's Lua module is not installed", 5 unless NginxTest::has_lua();
    my ($oom_dir, $file, $no) = make_cgroup();
    skip "no second memory cgroup: $no", 5 unless $oom_dir;
    push @made, $oom_dir;
    write_text("$oom_dir/$file", 128 * $MiB);
    my $o = NginxTest->new;
    $o->write_standard_conf(lua => 1, server => <<'EOF');
        location = /grow {
            content_by_lua_block {
                local held = {}
                local pad = string.rep("o", 65500)
                for i = 1, 8192 do held[i] = pad .. i end
                ngx.say(#held)
            }
        }
EOF
    $o->run(prefix => [in_cgroup($oom_dir)]);
    my ($victim) = $o->worker_pids;
    my $res = eval { $o->get($o->port(1), '/grow') };
    $o->wait_for(sub { my @w = $o->worker_pids; @w && $w[0] != $victim }, 'the worker respawned');
    sleep 1.1;
    my ($j) = $o->get_json($o->port(1), '/memory_status');
    my $c = $j->{container};
    cmp_ok($c->{oom}{kills_since_start}, '>=', 1, "the kill is counted: $c->{oom}{kills_since_start}");
    my $own = (read_file_text("$oom_dir/" . ($v1 ? 'memory.oom_control' : 'memory.events')) // '') =~ /^oom_kill (\d+)/m ? $1 : undef;
    is($c->{oom}{kills}, $own, "as the group's own file says ($own)");
    my ($f) = grep { $_->{code} eq 'oom_killed' } @{ $j->{findings} };
    ok($f, 'oom_killed fires') or diag explain $j->{findings};
    is($f->{severity}, 'critical', 'critical');
    is($f->{evidence}{oom_kills_since_start}, $c->{oom}{kills_since_start}, 'its evidence: the kills since start');
    $o->done_file(allow => [qr/exited on signal 9/]);
}

done_testing;
