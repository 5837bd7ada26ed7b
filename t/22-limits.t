#!/usr/bin/perl

# At the edges (issue 21): a worker that cannot have its measuring thread
# answers on the loop, says so in each answer's errors, logs it once, and
# retries with a backoff.

use warnings;
use strict;

use FindBin;
use lib "$FindBin::Bin/lib";

use Test::More;
use Time::HiRes qw(sleep);
use NginxTest;

plan skip_all => 'needs root (workers as nobody, prlimit on the master)' if $>;
plan skip_all => 'prlimit is missing' if system('command -v prlimit >/dev/null');

my $t = NginxTest->new;
$t->write_file_expand('nginx.conf', <<'EOF');
%%LOAD_MODULE%%
%%TEST_GLOBALS%%
user nobody nogroup;
worker_processes 1;
events { worker_connections 64; }
http {
    %%TEST_GLOBALS_HTTP%%
    server {
        listen 127.0.0.1:%%PORT_1%%;
        location = /ms { memory_status; }
    }
}
EOF
$t->run;
my $port = $t->port(1);

# One process for nobody, the worker itself: its thread cannot be created.
# Root's master is not held to the limit; the workers it forks next inherit it.
# Only the soft limit: raising it back needs no privilege.
my ($hard) = qx{prlimit --pid @{[ $t->master_pid ]} --nproc --noheadings --raw -o HARD} =~ /(\S+)/;
system('prlimit', '--pid', $t->master_pid, '--nproc=1:') == 0 or die "prlimit failed";
$t->reload;

my ($answers, $with_error) = (0, 0);
for (1 .. 300) {
    my ($j, $r) = $t->get_json($port, '/ms');
    $answers++ if $r->{status} == 200;
    $with_error++ if grep { $_->{source} eq 'measuring' && $_->{error} =~ /measuring on the event loop: thread/ }
        @{ $j->{errors} };
}
is($answers, 300, 'no thread: every answer is a 200 (measured on the loop)');
is($with_error, 300, 'no thread: each answer says so in its errors');
my @alerts = $t->error_log =~ /(\[alert\].*measuring on the event loop)/g;
is(scalar @alerts, 1, '300 answers without a thread: one [alert], not one each');

# The retry after the backoff fails again: still no second alert within a minute.
sleep 1.2;
$t->get_json($port, '/ms');
@alerts = $t->error_log =~ /(\[alert\].*measuring on the event loop)/g;
is(scalar @alerts, 1, 'a retry after the backoff that fails again logs nothing more within a minute');

# The limit lifted, a new worker has its thread again.
system('prlimit', '--pid', $t->master_pid, "--nproc=$hard:") == 0 or die "prlimit failed";
$t->reload;
my ($j) = $t->get_json($port, '/ms');
ok(!grep({ $_->{source} eq 'measuring' } @{ $j->{errors} }), 'the limit lifted: measured off the loop again');

$t->done_file(allow => [qr/measuring on the event loop: thread/]);
done_testing();
