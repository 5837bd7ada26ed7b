#!/usr/bin/perl

# Several workers each answer with their own pid; the module loads beside
# Debian's Lua module in either order; after a reload it still answers;
# under master_process off the role is "single".

use warnings;
use strict;

use FindBin;
use lib "$FindBin::Bin/lib";

use Test::More;
use NginxTest;
use MemoryStatus qw(check_base_shape);

# What is loaded, in order; the orders with Lua only where Debian's Lua module is.
my %layouts = (
    'module alone'       => ['module'],
    'module, then lua'   => ['module', 'lua'],
    'lua, then module'   => ['lua', 'module'],
);

for my $name (sort keys %layouts) {
    my $lua = grep { $_ eq 'lua' } @{ $layouts{$name} };
    SKIP: {
        skip "Debian's Lua module is not installed", 26 if $lua && !NginxTest::has_lua();
        my $t = NginxTest->new;
        $t->write_standard_conf(
            load => $layouts{$name},
            workers => 2,
            # reuseport: the kernel spreads new connections over both workers.
            listen => '%%PORT_1%% reuseport',
            lua_server => 'location = /lua { content_by_lua_block { ngx.say(ngx.worker.pid()) } }',
        );
        $t->run;
        my $port = $t->port(1);

        if ($lua) {
            my $r = $t->get($port, '/lua');
            like($r->{content}, qr/^\d+$/, "$name: Lua answers");
        }

        my @workers = $t->worker_pids;
        is(scalar @workers, 2, "$name: two workers");
        my ($seen, $first) = answers_by_pid($t, $port);
        check_base_shape($first, $name);
        is_deeply([sort { $a <=> $b } keys %$seen], \@workers,
            "$name: each worker answers with its own pid");
        my %numbers = map { $_->{nginx}{worker} => 1 } values %$seen;
        is_deeply([sort keys %numbers], [0, 1], "$name: worker numbers 0 and 1");

        $t->reload;
        my @new_workers = $t->worker_pids;
        my ($after) = answers_by_pid($t, $port);
        ok(keys %$after >= 1, "$name: answers after reload");
        ok(!grep({ !in($_, @new_workers) } keys %$after), "$name: after reload, pids are the new workers'");

        $t->done_file;
    }
}

# master_process off: one process, role "single".
{
    my $t = NginxTest->new;
    $t->write_standard_conf(main => 'master_process off;');
    $t->run(single => 1);
    my ($j) = $t->get_json($t->port(1), '/memory_status');
    is($j->{nginx}{role}, 'single', 'master_process off: role single');
    is($j->{nginx}{pid}, $t->master_pid, 'master_process off: the one process');
    check_base_shape($j, 'single');
    $t->done_file;
}

done_testing();

sub in { my $x = shift; grep { $_ == $x } @_ }

# Enough fresh connections that both workers are hit; answers keyed by pid.
sub answers_by_pid {
    my ($t, $port) = @_;
    my (%seen, $first);
    for (1 .. 40) {
        my ($j) = $t->get_json($port, '/memory_status');
        $first //= $j;
        my $pid = $j->{nginx}{pid} + 0;    # a copy: a hash key would stringify the JSON number
        $seen{$pid} //= $j;
    }
    return (\%seen, $first);
}
