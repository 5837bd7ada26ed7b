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

$Test::Nginx::Util::FilterHttpConfig = sub {
    my ($config) = @_;
    return ($config // '') . "\n    server {\n        listen 127.0.0.1:$port;\n"
        . "        location = /ms { memory_status; }\n    }\n";
};

1;
