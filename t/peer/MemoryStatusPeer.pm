package MemoryStatusPeer;

# Loaded into each of lua-nginx-module's own test files by scripts/peer
# (PERL5OPT=-MMemoryStatusPeer): every test's http block gets one more server,
# on a port of its own, with a memory_status location that a scraper asks
# throughout the run. The test's own servers are left as they are.

use warnings;
use strict;

use Test::Nginx::Util ();

my $port = $ENV{MEMORY_STATUS_PEER_PORT}
    or die "MEMORY_STATUS_PEER_PORT is not set\n";

# On the http_config's last line, before its trailing whitespace: the lines
# of every test's nginx.conf keep their numbers (tests match log lines that
# name them, as in "set_by_lua(nginx.conf:43)").
my $ours = " server { listen 127.0.0.1:$port; location = /ms { memory_status; } }";

$Test::Nginx::Util::FilterHttpConfig = sub {
    my ($config) = @_;
    $config //= '';
    $config =~ s/(\s*)\z/$ours$1/;
    return $config;
};

1;
