#!/usr/bin/perl

# The example configurations in nginx-conf/ work as their comments say.

use warnings;
use strict;

use FindBin;
use lib "$FindBin::Bin/lib";

use Test::More;
use NginxTest;
use MemoryStatus qw(check_base_shape);

# An example runs in a temp prefix laid out like the demo's: modules/ with our
# module and Debian's, temp/ and logs/; its ports swapped for free ones.
sub example {
    my ($file) = @_;
    my $t = NginxTest->new;
    my $conf = NginxTest::read_file_text("$NginxTest::ROOT/nginx-conf/$file") or die "$file: $!";
    $conf =~ s/127\.0\.0\.1:8089/'127.0.0.1:' . $t->port(1)/ge;
    $conf =~ s/127\.0\.0\.1:8090/'127.0.0.1:' . $t->port(2)/ge;
    my $p = $t->prefix;
    mkdir "$p/$_" for qw(modules temp logs);
    symlink $NginxTest::MODULE, "$p/modules/ngx_http_memory_status_module.so" or die $!;
    for my $m (qw(ndk_http_module ngx_http_lua_module)) {
        symlink "$NginxTest::MODULES_DIR/$m.so", "$p/modules/$m.so" or die $!;
    }
    # The examples write their pid and error log under logs/.
    $t->{pid_file} = "$p/logs/nginx.pid";
    $t->{error_log} = "$p/logs/error.log";
    $t->write_file('nginx.conf', $conf);
    return $t;
}

{
    my $t = example('minimal.conf');
    $t->run;
    my ($j, $res) = $t->get_json($t->port(1), '/memory_status');
    is($res->{status}, 200, 'minimal: 200');
    check_base_shape($j, 'minimal');
    is_deeply($j->{findings}, [], 'minimal: no finding');
    $t->done_file;
}

SKIP: {
    skip "Debian's Lua module is not installed", 24 unless NginxTest::has_lua();
    my $t = example('lua-shared-dicts.conf');
    $t->run;
    like($t->get($t->port(1), '/fill?n=100')->{content}, qr/^stored 100 values/, 'lua example: /fill');
    my ($j, $res) = $t->get_json($t->port(1), '/memory_status');
    is($res->{status}, 200, 'lua example: 200');
    check_base_shape($j, 'lua example');
    # What scripts/demo does: a quiet server has nothing to warn about.
    like($t->get($t->port(1), '/fill?n=20000')->{content}, qr/^stored 20000 values/, 'lua example: /fill as the demo does');
    my ($d) = $t->get_json($t->port(1), '/memory_status');
    is(scalar(grep { $_->{severity} ne 'info' } @{ $d->{findings} }), 0, 'the demo: no warning or critical finding')
        or diag explain $d->{findings};
    $t->done_file;
}

{
    my $t = example('access-control.conf');
    $t->run;
    is($t->get($t->port(1), '/memory_status')->{status}, 200, 'access control: loopback listener allowed');
    my $public = $t->get($t->port(2), '/memory_status');
    is($public->{status}, 401, 'access control: others must authenticate');
    unlike($public->{content}, qr/resident_bytes/, 'access control: nothing leaks with the 401');
    $t->done_file;
}

done_testing();
