#!/usr/bin/perl

# The Debian package (scripts/package) installed into the machine's own nginx:
# apt-get installs it beside Debian's modules, the maintainer scripts enable it
# in modules-enabled, nginx -t passes on Debian's own configuration, a location
# with memory_status answers from the nginx that Debian's init script starts, an
# admin's disabling survives a reinstall, and remove then purge leave nothing.
# Changes the machine's nginx: it runs only when scripts/test gives it the
# package (TEST_DEB_PACKAGE), as root, against Debian's nginx.

use warnings;
use strict;

use FindBin;
use lib "$FindBin::Bin/lib";

use HTTP::Tiny;
use JSON::PP qw(decode_json);
use Test::More;
use NginxTest;

our $PKG = 'libnginx-mod-http-memory-status';
our $SO = '/usr/lib/nginx/modules/ngx_http_memory_status_module.so';
our $AVAILABLE = '/usr/share/nginx/modules-available/mod-http-memory-status.conf';
our $LINK = '/etc/nginx/modules-enabled/50-mod-http-memory-status.conf';
our $SITE = '/etc/nginx/conf.d/memory-status-package-test.conf';
our $INIT = '/etc/init.d/nginx';
my $DEB = $ENV{TEST_DEB_PACKAGE};
my $touched;    # set once the test may have changed the machine
plan skip_all => 'TEST_DEB_PACKAGE is not set (scripts/test builds the package and sets it)' unless $DEB;
plan skip_all => "the package is for Debian's nginx, not $NginxTest::NGINX" if $NginxTest::NGINX ne '/usr/sbin/nginx';
die "not root: cannot install $DEB\n" if $>;
die "$DEB missing (an absolute path)\n" unless -f $DEB && $DEB =~ m{^/};


sub sh {
    my ($cmd) = @_;
    my $out = qx{$cmd 2>&1};
    return ($? == 0, $out);
}
sub apt {
    my ($args) = @_;
    return sh("DEBIAN_FRONTEND=noninteractive apt-get -y -q $args");
}
sub installed { scalar(qx{dpkg-query -W -f='\${Status}' $PKG 2>/dev/null}) =~ /ok installed/ }
sub nginx_running { sh('pgrep -f "^nginx: master process /usr/sbin/nginx"') }

# Whatever happens, the machine is left as found.
END {
    return unless $touched;
    local $?;    # the test's own exit status stays
    sh("$INIT stop") if nginx_running();
    unlink $SITE;
    sh("dpkg --purge $PKG") if installed() || -e $LINK || -e "$LINK.removed";
}

ok(!installed(), 'not installed before the test');
$touched = 1;
my ($ok, $out) = apt("install $DEB");
ok($ok, 'apt-get install ./the.deb') or diag $out;
ok(installed(), 'dpkg says installed');
ok(-f $SO, "the module is in Debian's modules directory");
is(NginxTest::read_file_text($AVAILABLE), "load_module modules/ngx_http_memory_status_module.so;\n",
    'modules-available holds the load_module line');
is(readlink($LINK), $AVAILABLE, 'postinst enabled it in modules-enabled');
like(scalar qx{dpkg-query -W -f='\${Depends}' $PKG}, qr/^nginx-abi-1\.22\.1-\d+, libc6/, 'Depends on the nginx ABI and libc');

my $port = NginxTest->new->port(1);
open my $fh, '>', $SITE or die "$SITE: $!";
print $fh <<"EOF";
server {
    listen 127.0.0.1:$port;
    location = /memory_status {
        allow 127.0.0.1;
        deny all;
        memory_status;
    }
}
EOF
close $fh;
($ok, $out) = sh('/usr/sbin/nginx -t');
ok($ok, "nginx -t on Debian's own configuration with the module enabled") or diag $out;

($ok, $out) = sh("$INIT start");
ok($ok, "Debian's init script starts nginx") or diag $out;
my $res;
for (1 .. 50) {
    $res = HTTP::Tiny->new(timeout => 5)->get("http://127.0.0.1:$port/memory_status");
    last if $res->{status} == 200;
    select undef, undef, undef, 0.1;
}
is($res->{status}, 200, 'the location answers') or diag $res->{content};
my $j = eval { decode_json($res->{content}) };
ok($j, 'as JSON');
if ($j) {
    is($j->{nginx}{version}, '1.22.1', "from Debian's nginx");
    is($j->{nginx}{role}, 'worker', 'a worker answered');
    my ($uid) = NginxTest::read_file_text("/proc/$j->{nginx}{pid}/status") =~ /^Uid:\s+(\d+)/m;
    is($uid, scalar getpwnam('www-data'), "the worker runs as Debian's www-data");
    ok($j->{lua}{http}, "beside Debian's Lua module, enabled in modules-enabled");
}
($ok, $out) = sh("$INIT stop");
ok($ok, 'nginx stops') or diag $out;
unlink $SITE;

# An admin who disabled the module keeps it disabled across a reinstall.
unlink $LINK;
($ok, $out) = apt("install --reinstall $DEB");
ok($ok, 'reinstall') or diag $out;
ok(!-e $LINK, "a reinstall keeps the admin's disabling");
symlink $AVAILABLE, $LINK or die "symlink: $!";   # the admin enables it again

($ok, $out) = apt("remove $PKG");
ok($ok, 'apt-get remove') or diag $out;
ok(!-e $SO, 'remove: the module file is gone');
ok(!-e $AVAILABLE, 'remove: the modules-available file is gone');
ok(!-e $LINK, 'remove: not enabled any more');
ok(-l "$LINK.removed", 'remove: the link set aside, as Debian keeps it until purge');
($ok, $out) = sh('/usr/sbin/nginx -t');
ok($ok, 'nginx -t still passes after remove') or diag $out;

($ok, $out) = apt("purge $PKG");
ok($ok, 'apt-get purge') or diag $out;
ok(!-e "$LINK.removed" && !-e $LINK, 'purge: no link left');
is(scalar qx{dpkg-query -W -f='\${Status}' $PKG 2>/dev/null}, '', 'purge: dpkg knows nothing of it');
my @left = grep { -e } map { glob } ('/usr/lib/nginx/modules/*memory_status*', '/usr/share/nginx/modules-available/*memory-status*',
    '/etc/nginx/modules-enabled/*memory-status*', "/usr/share/doc/$PKG");
is_deeply(\@left, [], 'purge: nothing of the package on disk');

done_testing;
