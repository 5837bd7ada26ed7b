#!/usr/bin/perl

# Dashboards and alerts (monitoring/): the rules linted and unit-tested by
# promtool, the alerts' conventions, the dashboard's JSON; then a real
# Prometheus scraping a real nginx (two workers, a reload during the run)
# with our rules loaded: every metric name monitoring/ uses is in the
# module's answer, every recording rule has samples, every panel's query
# returns data with the dashboard's variables substituted.

use warnings;
use strict;

use FindBin;
use lib "$FindBin::Bin/lib";

use IO::Socket::INET;
use JSON::PP qw(decode_json);
use Test::More;
use Time::HiRes qw(sleep);
use NginxTest qw(read_file_text);
use Cgroup qw(make_cgroup write_text in_cgroup);
use Prometheus;

my $MON = "$FindBin::Bin/../monitoring";
my $LUA = NginxTest::has_lua();
my $NO_LUA = "Debian's Lua module is not installed";

plan skip_all => 'prometheus (promtool and the server) is not installed' unless Prometheus::installed();

# A YAML file as Perl data, read by python3-yaml.
sub yaml_file {
    my ($file) = @_;
    my $json = qx{python3 -c 'import json, sys, yaml; print(json.dumps(yaml.safe_load(open(sys.argv[1]))))' '$file'};
    die "cannot read $file as YAML" if $?;
    return decode_json($json);
}

# GitHub's anchors of the README's headings.
my %anchor = map {
    my $h = lc s/^#+\s+//r;
    $h =~ s/[^\w\- ]//g;
    $h =~ tr/ /-/;
    ($h => 1);
} grep { /^#{1,4} / } split /\n/, read_file_text("$FindBin::Bin/../README.md");

# --- promtool: lint and unit tests -----------------------------------------------
{
    my $out = qx{cd '$MON' && /usr/bin/promtool check rules rules.yml alerts.yml 2>&1};
    is($?, 0, 'promtool check rules: rules.yml and alerts.yml') or diag $out;
    $out = qx{cd '$MON' && /usr/bin/promtool test rules tests/alerts_test.yml 2>&1};
    is($?, 0, 'promtool test rules: every alert fires on its input series and the demo fires none') or diag $out;
}

# --- the alerts' conventions ---------------------------------------------------------
my @alerts = map { @{ $_->{rules} } } @{ yaml_file("$MON/alerts.yml")->{groups} };
my @records = map { @{ $_->{rules} } } @{ yaml_file("$MON/rules.yml")->{groups} };
cmp_ok(scalar @alerts, '>=', 10, scalar(@alerts) . ' alerts');
my $tests = read_file_text("$MON/tests/alerts_test.yml");
for my $a (@alerts) {
    my $name = $a->{alert};
    like($name, qr/^NginxMemory[A-Z][A-Za-z0-9]+$/, "$name: CamelCase, one prefix");
    like($a->{labels}{severity} // '', qr/^(critical|warning|info)$/, "$name: severity $a->{labels}{severity}");
    ok($a->{annotations}{$_}, "$name: $_ annotation") for qw(summary description);
    my ($anchor) = ($a->{annotations}{runbook_url} // '') =~ /^README\.md#(.+)$/;
    ok($anchor && $anchor{$anchor}, "$name: runbook_url names a README section ($anchor)");
    # A gauge's condition must hold for a while; a counter's increase over a
    # window is already immune to a lost scrape.
    ok($a->{for} || $a->{expr} =~ /\bincrease\(/, "$name: a for (" . ($a->{for} // 'none') . ") or a counter's increase");
    like($tests, qr/alertname: \Q$name\E\n\s+exp_alerts:\n\s+- exp_labels/, "$name: a unit test where it fires");
}

# --- the dashboard -------------------------------------------------------------------
my $dashboard_text = read_file_text("$MON/dashboard.json");
my $dashboard = eval { decode_json($dashboard_text) };
ok($dashboard, 'dashboard.json is JSON') or diag $@;
is(scalar qx{python3 '$MON/dashboard.py'}, $dashboard_text, 'dashboard.json is what dashboard.py writes');
my %variable = map { $_->{name} => $_ } @{ $dashboard->{templating}{list} };
is($variable{datasource}{type}, 'datasource', 'a datasource variable');
is($variable{datasource}{query}, 'prometheus', 'of Prometheus');
like($variable{instance}{definition}, qr/label_values\(nginx_memory_info, instance\)/, 'an instance variable');
my @panels = grep { $_->{type} ne 'row' } @{ $dashboard->{panels} };
my @targets;
for my $p (@panels) {
    is($p->{datasource}{uid}, '${datasource}', "panel \"$p->{title}\": the datasource variable");
    for my $target (@{ $p->{targets} }) {
        like($target->{expr}, qr/instance=~"\$instance"/, "panel \"$p->{title}\" $target->{refId}: filtered by \$instance");
        push @targets, [$p->{title}, $target];
    }
}
my %types = map { $_->{type} => 1 } @panels;
ok(!grep({ !/^(timeseries|stat|table)$/ } keys %types), 'only Grafana\'s own panel types: ' . join(', ', sort keys %types));

# --- a real Prometheus scraping a real nginx, alerting a real Alertmanager --------------
# nginx in a child group of a group with a limit: the limit binds from the
# parent (limit_group), as a pod's does above its containers.
my ($group, $limit_file) = $> == 0 ? make_cgroup() : ();
my $nginx_group = $group ? "$group/nginx" : undef;
END { for my $d ($nginx_group, $group) { rmdir $d if $d && -d $d } }
if ($group) {
    write_text("$group/$limit_file", 4 << 30);
    mkdir $nginx_group or die "$nginx_group: $!";
}

my $t = NginxTest->new;
$t->write_standard_conf(
    workers => 2,
    lua => $LUA,
    lua_http => 'lua_shared_dict small 1m;',
    # A zone far larger than it holds: zone_oversized, a finding without Lua.
    http => ['memory_status_interval 1s;', 'limit_req_zone $binary_remote_addr zone=huge:128m rate=1r/s;'],
    server => 'location /files/ { alias %%PREFIX%%/www/; limit_rate 64k; }',
    lua_server => <<'EOF',
        # A 1m dict filled with small values: its slab allocations fail.
        location = /fill {
            content_by_lua_block {
                local d = ngx.shared.small
                local v = string.rep("v", 100)
                for i = 1, 20000 do d:set("k" .. i, v) end
                ngx.say("filled")
            }
        }
        # A Lua heap that grows by 160 KiB a request, never freed.
        location = /grow {
            content_by_lua_block {
                grown = grown or {}
                grown[#grown + 1] = string.rep(tostring(#grown) .. "x", 32768)
                ngx.say(#grown)
            }
        }
EOF
);
$t->write_file('www/small.html', "ok\n");
system('dd if=/dev/zero of=' . $t->prefix . '/www/big.bin bs=1M count=32 status=none') == 0 or die "dd: $?";
$t->run($group ? (prefix => [in_cgroup($nginx_group)]) : ());
my $target = '127.0.0.1:' . $t->port(1);

my $alertmanager;
SKIP: {
    skip 'prometheus-alertmanager is not installed', 1 unless Prometheus::alertmanager_installed();
    $alertmanager = Prometheus->start_alertmanager(port => $t->port(8), config => <<'EOF');
route: { receiver: operators, group_by: [alertname, instance], group_wait: 1s, group_interval: 1s, repeat_interval: 1h }
receivers: [ { name: operators } ]
EOF
    ok($alertmanager, 'Alertmanager started');
}

# The alerts as shipped, each "for" and the gauges' 3-minute windows read in
# seconds instead of minutes, so that what the test provokes fires within the
# run (promtool's tests above hold the real durations). The counters' and
# findings' windows stay: what fired stays firing for the rest of the run.
my $scaled = read_file_text("$MON/alerts.yml") =~ s/^(\s+for: \d+)m$/${1}s/mgr =~ s/\[3m\]/[3s]/gr;
$t->write_file('alerts-scaled.yml', $scaled);
my $rules = join ', ', map { "'$_'" } "$MON/rules.yml", $t->prefix . '/alerts-scaled.yml';
my $alerting = $alertmanager
    ? "alerting: { alertmanagers: [ { static_configs: [ { targets: ['127.0.0.1:" . $t->port(8) . "'] } ] } ] }"
    : '';
my $prometheus = Prometheus->start(port => $t->port(9), config => <<"EOF");
global: { scrape_interval: 1s, scrape_timeout: 1s, evaluation_interval: 1s }
rule_files: [ $rules ]
$alerting
scrape_configs:
  - job_name: nginx_memory
    metrics_path: /memory_status
    params: { format: [prometheus] }
    static_configs: [ { targets: ['$target'] } ]
EOF
ok($prometheus->wait_for(30, sub { $prometheus->query('up{job="nginx_memory"} == 1') }), 'Prometheus scrapes nginx')
    or diag $prometheus->log;

# The families of the module's answer: the union of scrapes (each answered by
# one worker) until the trends are fitted, before the reload restarts them.
my %family;
ok($prometheus->wait_for(60, sub {
    my $text = $t->get($t->port(1), '/memory_status?format=prometheus')->{content};
    $family{$1} = 1 while $text =~ /^# TYPE (\S+) /mg;
    $family{nginx_memory_trend_bytes_per_hour};
}), 'the trends are fitted');

# Quiet: the server as configured, nothing provoked, for longer than the
# longest scaled "for" (30 s): no alert pending or firing.
sleep 32;
my @quiet = $prometheus->query('ALERTS');
is(scalar @quiet, 0, 'quiet: no alert pending or firing after 32 s')
    or diag explain [map { $_->{metric} } @quiet];

# Provoked: slab allocation failures, a download slower than the reload (an
# old generation), a Lua heap growing in a straight line after the reload.
$t->get($t->port(1), '/fill') if $LUA;
my $slow = IO::Socket::INET->new(PeerAddr => $target, Timeout => 10) or die "connect: $!";
print $slow "GET /files/big.bin HTTP/1.0\r\nHost: localhost\r\n\r\n";
sysread($slow, my $head, 4096);
# Reloaded by hand: the old worker serving the download stays (the helper's
# reload waits for every old worker to leave).
my %old = map { $_ => 1 } $t->worker_pids;
kill 'HUP', $t->master_pid;
my @new;
ok($prometheus->wait_for(30, sub {
    @new = grep { !$old{$_} } $t->worker_pids;
    my %pids = map { $_->{metric}{pid} => 1 } $prometheus->query('nginx_memory_info');
    @new == 2 && grep { $pids{$_} } @new;
}), 'the new workers answer the scrapes after the reload');
note('reloaded: workers ' . join(' ', sort keys %old) . " became @new");
if ($LUA) {
    $t->get($t->port(1), '/grow'), sleep 0.1 for 1 .. 150;
}
# A dict filled to failures is full, too.
my @provoked = ('NginxMemoryOldGenerationLingering',
    $LUA ? qw(NginxMemoryZoneAllocFailures NginxMemoryZoneNearlyFull NginxMemorySteadyGrowth) : ());
# Each alert as first seen firing, and each group Alertmanager received.
my (%firing, %groups);
$prometheus->wait_for(120, sub {
    for my $a (grep { $_->{state} eq 'firing' } @{ ($prometheus->api('/api/v1/alerts') // {})->{alerts} // [] }) {
        $firing{ $a->{labels}{alertname} } //= $a;
    }
    if ($alertmanager) {
        $groups{ $_->{labels}{alertname} } //= $_ for @{ $alertmanager->get_json('/api/v2/alerts/groups') // [] };
    }
    !grep { !$firing{$_} || ($alertmanager && !$groups{$_}) } @provoked;
});
for my $name (@provoked) {
    ok($firing{$name}, "provoked: $name fires") or diag explain [values %firing];
}
SKIP: {
    skip "the Lua provocations: $NO_LUA", 4 unless $LUA;
    is($firing{NginxMemoryZoneAllocFailures}{labels}{zone}, 'small', 'the failing zone, by name');
    is($firing{NginxMemoryZoneNearlyFull}{labels}{zone}, 'small', 'the full zone, by name');
    like($firing{NginxMemorySteadyGrowth}{annotations}{description} // '',
        qr/grew steadily since the last reload: [\d.]+[KMG]iB per hour/, 'steady growth: its fitted rate, said');
    # The first steady growth seen firing: the heap's (lua_http_gc) or, when
    # its troughs are not yet three, the Lua owner's resident (lua_http).
    like($firing{NginxMemorySteadyGrowth}{labels}{subject} // '', qr/^worker \d+ \(pid \d+\) lua_http(?:_gc)?$/,
        'steady growth: the worker and the series');
}
like($firing{NginxMemoryOldGenerationLingering}{annotations}{description} // '',
    qr/^Old workers on \Q$target\E: 1, holding [\d.]+[KMG]iB resident/, 'old generation: its workers and their memory');
ok(!grep({ my $n = $_; !grep { $_ eq $n } @provoked } keys %firing), 'nothing else fires: ' . join(', ', sort keys %firing));

SKIP: {
    skip 'no Alertmanager', scalar @provoked unless $alertmanager;
    for my $name (@provoked) {
        my $g = $groups{$name};
        ok($g && $g->{labels}{instance} eq $target && @{ $g->{alerts} } >= 1
            && $g->{alerts}[0]{labels}{severity} eq $firing{$name}{labels}{severity},
            "Alertmanager: $name arrived, grouped by alertname and instance, with its labels")
            or diag explain $g;
    }
}
close $slow;

# Every metric name monitoring/ reads is a family of the module's answer, in
# the union of a few scrapes (each answered by one worker).
{
    my %used;
    for my $file (qw(rules.yml alerts.yml dashboard.json)) {
        my $text = read_file_text("$MON/$file");
        $used{$1}{$file} = 1 while $text =~ /(?<![\w:])(nginx_memory_[a-z0-9_]+)(?![\w:])/g;
    }
    cmp_ok(scalar keys %used, '>=', 15, scalar(keys %used) . ' metric names used by monitoring/');
    for my $name (sort keys %used) {
        SKIP: {
            skip "$name: the Lua VMs' series; $NO_LUA", 1 if !$LUA && $name =~ /_lua_/;
            skip "$name: the container's limit; no memory cgroup of the test's own here", 1
                if !$group && $name =~ /^nginx_memory_container_limit/;
            ok($family{$name}, "$name (" . join(', ', sort keys %{ $used{$name} }) . ') is in the answer');
        }
    }
}

# Every recording rule has samples.
for my $record (map { $_->{record} } @records) {
    SKIP: {
        skip "$record: $NO_LUA", 1 if !$LUA && $record =~ /_lua_/;
        ok($prometheus->wait_for(30, sub { $prometheus->query($record) }), "recorded: $record");
    }
}

# Every panel's query returns data, the dashboard's variables substituted.
for my $pair (@targets) {
    my ($title, $target_of) = @$pair;
    (my $expr = $target_of->{expr}) =~ s/\$instance/\Q$target\E/g;
    $expr =~ s/\\/\\\\/g;
    $expr =~ s/\$__rate_interval/1m/g;
    SKIP: {
        skip "\"$title\" $target_of->{refId}: $NO_LUA", 1 if !$LUA && $expr =~ /_lua_/;
        skip "\"$title\" $target_of->{refId}: no memory cgroup of the test's own here", 1
            if !$group && $expr =~ /container_limit_bytes/;
        my $got = $prometheus->wait_for(30, sub { scalar $prometheus->query($expr) });
        ok($got, "panel \"$title\" $target_of->{refId} returns $got series") or diag $expr;
    }
}

$prometheus->stop;
unlike($t->error_log, qr/\[(alert|crit|emerg)\]/, 'error.log: no alert, crit or emerg');
$t->stop;
done_testing();
