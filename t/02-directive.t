#!/usr/bin/perl

# Every wrong use of the directive fails `nginx -t` with an [emerg] naming the
# directive, the file and the line.

use warnings;
use strict;

use FindBin;
use lib "$FindBin::Bin/lib";

use Test::More;
use NginxTest;

sub conf {
    my ($http_extra, $server_extra, $location_body) = @_;
    return <<"EOF";
%%LOAD_MODULE%%
%%TEST_GLOBALS%%
events { }
http {
    %%TEST_GLOBALS_HTTP%%
$http_extra
    server {
        listen 127.0.0.1:%%PORT_1%%;
$server_extra
        location = /memory_status {
$location_body
        }
    }
}
EOF
}

# Line numbers count in the expanded file: placeholders expand to several lines.
sub line_of {
    my ($t, $needle, $nth) = @_;
    my @lines = split /\n/, NginxTest::read_file_text($t->prefix . '/nginx.conf');
    my $seen = 0;
    for my $i (0 .. $#lines) {
        return $i + 1 if $lines[$i] =~ $needle && ++$seen == ($nth // 1);
    }
    die "no line matching $needle";
}

my @cases = (
    ['argument', conf('', '', '            memory_status on;'),
        'invalid number of arguments in "memory_status" directive', qr/memory_status on;/],
    ['in server', conf('', '        memory_status;', '            memory_status;'),
        '"memory_status" directive is not allowed here', qr/^        memory_status;/],
    ['in http', conf('    memory_status;', '', '            memory_status;'),
        '"memory_status" directive is not allowed here', qr/^    memory_status;/],
    ['twice', conf('', '', "            memory_status;\n            memory_status;"),
        '"memory_status" directive is duplicate', qr/memory_status;/, 2],
    ['in main', conf('', '', '            memory_status;') =~ s{^(%%LOAD_MODULE%%\n)}{$1memory_status;\n}r,
        '"memory_status" directive is not allowed here', qr/^memory_status;/],
    ['interval 0', conf('    memory_status_interval 0;', '', '            memory_status;'),
        'invalid value "0" in "memory_status_interval" directive, it must be a time of 1s or more',
        qr/memory_status_interval 0;/],
    ['interval 500ms', conf('    memory_status_interval 500ms;', '', '            memory_status;'),
        'invalid value "500ms" in "memory_status_interval" directive, it must be a time of 1s or more',
        qr/memory_status_interval 500ms;/],
    ['interval not a time', conf('    memory_status_interval often;', '', '            memory_status;'),
        'invalid value "often" in "memory_status_interval" directive, it must be a time of 1s or more',
        qr/memory_status_interval often;/],
    ['interval in server', conf('', '        memory_status_interval 5s;', '            memory_status;'),
        '"memory_status_interval" directive is not allowed here', qr/memory_status_interval 5s;/],
    ['interval twice', conf("    memory_status_interval 5s;\n    memory_status_interval 6s;", '', '            memory_status;'),
        '"memory_status_interval" directive is duplicate', qr/memory_status_interval 6s;/],
    ['history too short', conf('    memory_status_history 2;', '', '            memory_status;'),
        'invalid value "2" in "memory_status_history" directive, it must be a number of samples from 3 to 8640',
        qr/memory_status_history 2;/],
    ['history not a number', conf('    memory_status_history 1h;', '', '            memory_status;'),
        'invalid value "1h" in "memory_status_history" directive, it must be a number of samples from 3 to 8640',
        qr/memory_status_history 1h;/],
    ['history in location', conf('', '', "            memory_status;\n            memory_status_history 10;"),
        '"memory_status_history" directive is not allowed here', qr/memory_status_history 10;/],
    ['history twice', conf("    memory_status_history 10;\n    memory_status_history 20;", '', '            memory_status;'),
        '"memory_status_history" directive is duplicate', qr/memory_status_history 20;/],
    ['lua walk history yes', conf('    memory_status_lua_walk_history yes;', '', '            memory_status;'),
        'invalid value "yes" in "memory_status_lua_walk_history" directive, it must be "on" or "off"',
        qr/memory_status_lua_walk_history yes;/],
    ['lua walk history in location', conf('', '', "            memory_status;\n            memory_status_lua_walk_history on;"),
        '"memory_status_lua_walk_history" directive is not allowed here', qr/memory_status_lua_walk_history on;/],
    ['lua walk history twice', conf("    memory_status_lua_walk_history on;\n    memory_status_lua_walk_history off;", '', '            memory_status;'),
        '"memory_status_lua_walk_history" directive is duplicate', qr/memory_status_lua_walk_history off;/],
    ['lua walk max stall zero', conf('    memory_status_lua_walk_max_stall 0;', '', '            memory_status;'),
        'invalid value "0" in "memory_status_lua_walk_max_stall" directive, it must be a time from 1ms to 10s',
        qr/memory_status_lua_walk_max_stall 0;/],
    ['lua walk max stall too long', conf('    memory_status_lua_walk_max_stall 11s;', '', '            memory_status;'),
        'invalid value "11s" in "memory_status_lua_walk_max_stall" directive, it must be a time from 1ms to 10s',
        qr/memory_status_lua_walk_max_stall 11s;/],
    ['lua walk max stall words', conf('    memory_status_lua_walk_max_stall soon;', '', '            memory_status;'),
        'invalid value "soon" in "memory_status_lua_walk_max_stall" directive, it must be a time from 1ms to 10s',
        qr/memory_status_lua_walk_max_stall soon;/],
    ['lua walk max stall in location', conf('', '', "            memory_status;\n            memory_status_lua_walk_max_stall 5ms;"),
        '"memory_status_lua_walk_max_stall" directive is not allowed here', qr/memory_status_lua_walk_max_stall 5ms;/],
    ['lua walk max stall twice', conf("    memory_status_lua_walk_max_stall 5ms;\n    memory_status_lua_walk_max_stall 9ms;", '', '            memory_status;'),
        '"memory_status_lua_walk_max_stall" directive is duplicate', qr/memory_status_lua_walk_max_stall 9ms;/],
);

for my $case (@cases) {
    my ($name, $conf, $message, $line_re, $nth) = @$case;
    my $t = NginxTest->new;
    $t->write_file_expand('nginx.conf', $conf);
    my ($ok, $out) = $t->try_run;
    ok(!$ok, "$name: nginx -t fails");
    my $line = line_of($t, $line_re, $nth);
    like($out, qr/\[emerg\] \Q$message\E in \Q${\ $t->prefix}\E\/+nginx\.conf:$line\b/,
        "$name: [emerg] names directive, file and line $line") or diag $out;
}

# Without the module loaded the directive is unknown, as nginx says.
{
    my $t = NginxTest->new;
    (my $conf = conf('', '', '            memory_status;')) =~ s/%%LOAD_MODULE%%//;
    $t->write_file_expand('nginx.conf', $conf);
    my ($ok, $out) = $t->try_run;
    ok(!$ok, 'not loaded: nginx -t fails');
    like($out, qr/unknown directive "memory_status"/, 'not loaded: unknown directive');
}

# A module built for another nginx: nginx's own [emerg] names both versions.
# scripts/test gives the matrix runs the module built for Debian's 1.22.1.
SKIP: {
    my $foreign = $ENV{TEST_NGINX_FOREIGN_MODULE};
    skip 'TEST_NGINX_FOREIGN_MODULE is not set (the platform matrix of scripts/test sets it)', 3
        unless $foreign;
    my $t = NginxTest->new;
    local $NginxTest::MODULE = $foreign;
    $t->write_file_expand('nginx.conf', conf('', '', '            memory_status;'));
    my ($ok, $out) = $t->try_run;
    ok(!$ok, 'module built for another nginx: nginx -t fails');
    my ($want) = NginxTest::nginx_version() =~ /^(\d+)\.(\d+)\.(\d+)/
        ? sprintf('%d%03d%03d', $1, $2, $3) : ('?');
    like($out, qr/\[emerg\] module "\Q$foreign\E" version \d+ instead of $want in /, "[emerg] says: version ... instead of $want")
        or diag $out;
    ok($t->error_log !~ /\[(alert|crit)\]/, 'nothing worse than the [emerg]');
}

# The right use passes.
{
    my $t = NginxTest->new;
    $t->write_file_expand('nginx.conf', conf('', '', '            memory_status;'));
    my ($ok, $out) = $t->try_run;
    ok($ok, 'correct use: nginx -t passes') or diag $out;
}

done_testing();
