#!/usr/bin/perl

# Formats: Prometheus (checked by promtool, scraped by a real Prometheus),
# HTML (rendered by headless Chromium), how the format is chosen, and errors.

use warnings;
use strict;

use FindBin;
use lib "$FindBin::Bin/lib";

use Encode ();
use File::Path qw(make_path);
use File::Temp qw(tempdir);
use Test::More;
use Time::HiRes qw(sleep time);
use NginxTest qw(read_file_text);
use Prometheus;

# Without Debian's Lua module: no dict named cache, and nothing said of it or
# of the Lua VM.
my $LUA = NginxTest::has_lua();
my $NO_LUA = "Debian's Lua module is not installed";

my $t = NginxTest->new;
$t->write_standard_conf(
    lua => $LUA,
    lua_http => 'lua_shared_dict cache 1m;',
    # Zones named in UTF-8, and in bytes that are not: the answers escape those.
    http => ['limit_req_zone $binary_remote_addr zone=per_ip:1m rate=10r/s;',
        "limit_req_zone \$binary_remote_addr zone=caf\xC3\xA9:1m rate=10r/s;",
        "limit_req_zone \$binary_remote_addr zone=b\xFFd:1m rate=10r/s;"],
    server => <<'EOF',
        location = /metrics { memory_status; memory_status_format prometheus; }
        location = /terminal { memory_status; memory_status_format text; }
        location = /page { memory_status; memory_status_format html; }
EOF
    servers => <<'EOF',
        server {
            listen 127.0.0.1:%%PORT_2%%;
            memory_status_format prometheus;    # inherited by the location
            location = /memory_status { memory_status; }
        }
EOF
);
$t->run;
my $port = $t->port(1);

# --- Prometheus ---------------------------------------------------------------------

my $prom = $t->get($port, '/memory_status?format=prometheus');
is($prom->{status}, 200, 'format=prometheus: 200');
is($prom->{headers}{'content-type'}, 'text/plain; version=0.0.4; charset=utf-8', 'exposition format 0.0.4');
my $text = $prom->{content};
like($text, qr/^# HELP nginx_memory_process_resident_bytes /m, 'HELP lines');
like($text, qr/^# TYPE nginx_memory_slabs_pages_slots_reqs_total counter$/m, 'slot requests are a counter ending in _total');
SKIP: {
    skip $NO_LUA, 1 unless $LUA;
    like($text, qr/^nginx_memory_slabs_pages_used\{pid="\d+",worker="0",zone="cache"\} \d+$/m, 'Angie-shaped slab pages');
}
like($text, qr/^nginx_memory_slabs_pages_slots_used\{pid="\d+",worker="0",zone="per_ip",slot="8"\} \d+$/m, 'slot label');
SKIP: {
    skip $NO_LUA, 2 unless $LUA;
    like($text, qr/^nginx_memory_owner_resident_bytes\{pid="\d+",worker="0",owner="lua_http"\} \d+$/m, 'owner label');
    like($text, qr/^nginx_memory_lua_gc_bytes\{pid="\d+",worker="0",vm="http"\} \d+$/m, 'vm label');
}
unlike($text, qr/^nginx_memory_\w*_bytes\{[^}]*\} \d+\.\d+$/m, 'byte gauges are integers');
for my $name ($text =~ /^# TYPE (\S+) counter$/mg) {
    like($name, qr/_total$/, "counter $name ends in _total");
}
ok(!grep({ /_bytes$/ && /(chunks|runs|found|threads|zones|files|reqs|fails)/ } $text =~ /^# TYPE (\S+) /mg),
    'no count inside a _bytes metric');

# The same numbers as the JSON answer.
my ($j) = $t->get_json($port, '/memory_status');
SKIP: {
    skip $NO_LUA, 1 unless $LUA;
    my ($cache) = grep { $_->{name} eq 'cache' } @{ $j->{zones} };
    like($text, qr/^nginx_memory_zone_size_bytes\{pid="\d+",worker="0",zone="cache",owner="ngx_http_lua_module",kind="lua_shared_dict"\} $cache->{size_bytes}$/m,
        'zone size as in JSON');
}

SKIP: {
    skip 'promtool not installed', 2 unless -x '/usr/bin/promtool';
    my $file = File::Temp->new;
    print $file $text;
    close $file;
    my $out = qx{/usr/bin/promtool check metrics < $file 2>&1};
    is($?, 0, 'promtool check metrics passes') or diag $out;
    is($out, '', 'promtool has no complaints') or diag $out;
}

# How the format is chosen.
like($t->get($port, '/metrics')->{content}, qr/^# HELP nginx_memory_info /, 'memory_status_format prometheus: the default');
like($t->get($port, '/metrics?format=json')->{content}, qr/^\{/, 'format=json overrides it');
like($t->get($t->port(2), '/memory_status')->{content}, qr/^# HELP/, 'inherited from the server level');
my $accept = $t->http('GET', $port, '/memory_status', headers => {
    Accept => 'application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,'
        . 'text/plain;version=0.0.4;q=0.5,*/*;q=0.1' });
like($accept->{content}, qr/^# HELP/, "Prometheus' Accept header picks the exposition format");
like($t->http('GET', $port, '/memory_status', headers => { Accept => '*/*' })->{content}, qr/^\{/, 'Accept */*: JSON');
SKIP: {
    skip $NO_LUA, 2 unless $LUA;
    my $zone_prom = $t->get($port, '/memory_status?zone=cache&format=prometheus')->{content};
    like($zone_prom, qr/zone="cache"/, 'zone=cache in Prometheus format');
    unlike($zone_prom, qr/zone="per_ip"|process_resident/, 'zone=cache: that zone alone');
}

# A size as the answers write it for people (format::human_bytes).
sub human {
    my ($bytes) = @_;
    my @units = ('B', 'KiB', 'MiB', 'GiB', 'TiB');
    my ($value, $unit) = ($bytes, 0);
    ($value, $unit) = ($value / 1024, $unit + 1) while $value >= 1024 && $unit < $#units;
    return $unit ? sprintf('%.1f %s', $value, $units[$unit]) : "$bytes B";
}

# --- Text, for a person at a terminal -----------------------------------------------

my $plain = $t->get($port, '/memory_status?format=text');
is($plain->{status}, 200, 'format=text: 200');
is($plain->{headers}{'content-type'}, 'text/plain; charset=utf-8', 'plain text');
my $words = $plain->{content};
like($words, qr/^nginx 1\.\d+\.\d+ memory \(ngx-memory-status [\d.]+\), answered by worker 0 \(pid \d+\)$/m, 'who answered');
like($words, qr/^Server: [\d.]+ (B|KiB|MiB|GiB) resident, every page counted once/m, 'the server counted once');
like($words, qr/^Processes +pid +resident +anonymous +swap +top owners \(resident\)$/m, 'the processes, in columns');
like($words, qr/^Findings(: none)?$/m, 'the findings');
like($words, qr/^More: \?format=json, \?format=prometheus, \?format=html$/m, 'where the other formats are');
# Figures that do not move between two answers, as the JSON has them (the
# moving ones are checked against the same report in the unit tests).
($j) = $t->get_json($port, '/memory_status');
for my $p (@{ $j->{processes} }) {
    my $name = defined $p->{worker} ? "worker $p->{worker}" : $p->{role};
    like($words, qr/^  \Q$name\E +$p->{pid} /m, "process $name, pid $p->{pid}");
}
# The text's bytes are UTF-8, the JSON's names decoded characters.
for my $z (@{ $j->{zones} }) {
    my $size = human($z->{size_bytes});
    my $name = Encode::encode('UTF-8', $z->{name});
    like($words, qr/^  \Q$name\E +\Q$size\E /m, "zone $name: its size, $size");
}
my ($escaped) = grep { /^b.*d$/ && $_ ne 'b' } map { $_->{name} } @{ $j->{zones} };
ok($escaped && $escaped !~ /\xFF/, 'the JSON escapes a name that is not UTF-8: ' . ($escaped // 'none'));
like($words, qr/^  \Q$escaped\E /m, 'the text shows it escaped by the same rule') if $escaped;
my $lines = () = $words =~ /\n/g;
cmp_ok($lines, '<=', 60, "short: $lines lines");
my $asked = $t->http('GET', $port, '/memory_status', headers => { Accept => 'text/plain' });
like($asked->{content}, qr/^nginx .* memory/, 'Accept: text/plain picks text');
is($asked->{headers}{vary}, 'Accept', 'Vary: Accept');
like($t->http('GET', $port, '/memory_status', headers => { Accept => 'application/json, text/plain, */*' })->{content},
    qr/^\{/, 'a client that lists JSON first keeps JSON');
like($t->http('GET', $port, '/memory_status?zone=per_ip', headers => { Accept => 'text/plain' })->{content},
    qr/^\{.*"per_ip"/s, 'Accept: text/plain with zone=: the zone\'s JSON');
like($t->get($port, '/terminal')->{content}, qr/^nginx .* memory/, 'memory_status_format text');
my $zone_text = $t->get($port, '/memory_status?format=text&zone=per_ip');
is($zone_text->{status}, 400, 'text with zone=: 400');

# Errors.
my $bad = $t->get($port, '/memory_status?format=xml');
is($bad->{status}, 400, 'format=xml: 400');
is($bad->{content}, "memory_status: bad value \"xml\" for argument \"format\" (expected json, prometheus, html, text)\n",
    'format=xml: the supported formats named');
my $conflict = $t->get($port, '/memory_status?format=json&refresh=5');
is($conflict->{status}, 400, 'refresh with json: 400');
like($conflict->{content}, qr/conflicting arguments: refresh= applies to the html format only/, 'the reason');
is($t->get($port, '/page?zone=cache')->{status}, 400, 'html with zone=: 400');

# --- a real Prometheus scrapes it ------------------------------------------------------

SKIP: {
    skip 'prometheus not installed', 3 unless Prometheus::installed();
    my $prometheus = Prometheus->start(port => NginxTest->new->port(9), config => <<"EOF");
global: { scrape_interval: 1s, scrape_timeout: 1s }
scrape_configs:
  - job_name: nginx_memory
    metrics_path: /metrics
    static_configs: [ { targets: ['127.0.0.1:$port'] } ]
EOF
    my $result = $prometheus->wait_for(60, sub {
        my @r = $prometheus->query('nginx_memory_process_resident_bytes');
        @r ? \@r : undef;
    });
    ok($result, 'Prometheus scraped the location and its query API returns the series')
        or diag $prometheus->log;
    is($result && $result->[0]{metric}{job}, 'nginx_memory', 'the series comes from the nginx job');
    my @slots = $prometheus->query('nginx_memory_slabs_pages_slots_reqs_total');
    ok(grep({ $_->{metric}{slot} eq '8' } @slots), 'slot series are queryable too');
    $prometheus->stop;
}

# --- HTML in a real headless browser -----------------------------------------------------

my $page = $t->get($port, '/memory_status?format=html&refresh=30');
is($page->{status}, 200, 'format=html: 200');
is($page->{headers}{'content-type'}, 'text/html; charset=utf-8', 'html content type');
like($page->{content}, qr/<meta http-equiv="refresh" content="30">/, 'refresh=30');
unlike($page->{content}, qr/<script|\bsrc=|\bhref=|url\(/i, 'self-contained: no scripts, no external assets');
like($t->get($port, '/page')->{content}, qr/^<!DOCTYPE html>/, 'memory_status_format html');

SKIP: {
    my ($chromium) = grep { -x } qw(/usr/bin/chromium /usr/bin/chromium-browser);
    skip 'chromium not installed', 5 unless $chromium;
    my $profile = tempdir(CLEANUP => 1);
    my @flags = ('--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
        '--disable-background-networking', '--disable-component-update', '--disable-sync',
        "--user-data-dir=$profile", '--window-size=1100,1500');
    my $url = "http://127.0.0.1:$port/memory_status?format=html";
    my ($now) = $t->get_json($port, '/memory_status');
    my $dom = qx{$chromium @flags --dump-dom '$url' 2>/dev/null};
    like($dom, qr/<svg id="resident-pie"/, 'the browser rendered the page');
    my ($resident_svg) = $dom =~ m{(<svg id="resident-pie".*?</svg>)}s;
    my %slices = ($resident_svg // '') =~ /class="slice" data-name="(\w+)" data-bytes="(\d+)"/g;
    my $b = $now->{breakdown};
    my @nonzero = sort grep { $b->{$_} && ($b->{$_}{resident_bytes} // 0) > 0 } keys %$b;
    is_deeply([sort keys %slices], \@nonzero, "one slice per owner with a non-zero value (@nonzero)");
    ok(!grep({ !$_ } values %slices), 'every slice has a value');
    like($dom, qr/<svg id="virtual-pie"/, 'the virtual pie is there');
    my $dir = "$NginxTest::ROOT/t/tmp";
    make_path($dir);
    unlink "$dir/memory_status.png";
    qx{$chromium @flags --screenshot='$dir/memory_status.png' '$url' 2>/dev/null};
    ok(-s "$dir/memory_status.png", "screenshot at t/tmp/memory_status.png");
}

$t->done_file;

# --- the directive's wrong uses -------------------------------------------------------------

for my $case (['memory_status_format xml;', qr/\[emerg\] invalid value "xml" in "memory_status_format" directive, it must be one of: json, prometheus, html, text in \S+nginx\.conf:\d+/],
              ['memory_status_format;', qr/\[emerg\] invalid number of arguments in "memory_status_format" directive in \S+nginx\.conf:\d+/],
              ["memory_status_format json;\n    memory_status_format html;", qr/\[emerg\] "memory_status_format" directive is duplicate in \S+nginx\.conf:\d+/]) {
    my ($directive, $expect) = @$case;
    my $t = NginxTest->new;
    $t->write_file_expand('nginx.conf', <<"EOF");
%%LOAD_MODULE%%
%%TEST_GLOBALS%%
events { }
http {
    %%TEST_GLOBALS_HTTP%%
    $directive
    server { listen 127.0.0.1:%%PORT_1%%; location / { memory_status; } }
}
EOF
    my ($ok, $out) = $t->try_run;
    ok(!$ok, "'$directive': nginx -t fails");
    like($out, $expect, "'$directive': [emerg] names directive, file and line") or diag $out;
}

done_testing();
