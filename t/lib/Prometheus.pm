package Prometheus;

# A real Prometheus and Alertmanager (Debian's) for tests: started on loopback
# with a configuration of the test's own, their HTTP APIs queried, stopped at
# the end.

use warnings;
use strict;

use File::Temp qw(tempdir);
use HTTP::Tiny;
use JSON::PP qw(decode_json);
use Time::HiRes qw(sleep time);
use NginxTest qw(read_file_text);

sub installed { -x '/usr/bin/prometheus' }
sub alertmanager_installed { -x '/usr/bin/prometheus-alertmanager' }

# Prometheus->start(config => TEXT, port => PORT): the configuration written
# to a directory of its own, Prometheus started with it; dies when it does
# not answer within 60 s.
sub start {
    my ($class, %o) = @_;
    return $class->spawn(%o, program => '/usr/bin/prometheus', config_name => 'prometheus.yml',
        args => ['--storage.tsdb.path=%DIR%/data', @{ $o{args} // [] }]);
}

# Prometheus->start_alertmanager(config => TEXT, port => PORT): Debian's
# Alertmanager, alone (no cluster), the same way.
sub start_alertmanager {
    my ($class, %o) = @_;
    return $class->spawn(%o, program => '/usr/bin/prometheus-alertmanager', config_name => 'alertmanager.yml',
        args => ['--storage.path=%DIR%/data', '--cluster.listen-address=']);
}

sub spawn {
    my ($class, %o) = @_;
    my $dir = tempdir(CLEANUP => 1);
    my $self = bless { dir => $dir, port => $o{port}, ua => HTTP::Tiny->new(timeout => 10) }, $class;
    open my $cf, '>', "$dir/$o{config_name}" or die "$dir/$o{config_name}: $!";
    print $cf $o{config};
    close $cf or die $!;
    my $pid = fork // die "fork: $!";
    if (!$pid) {
        open STDOUT, '>', "$dir/server.log";
        open STDERR, '>&', \*STDOUT;
        exec $o{program}, "--config.file=$dir/$o{config_name}", "--web.listen-address=127.0.0.1:$o{port}",
            map { s/%DIR%/$dir/r } @{ $o{args} };
        exit 127;
    }
    $self->{pid} = $pid;
    my $deadline = time + 60;
    until ($self->{ua}->get($self->url('/-/ready'))->{success}) {
        die "$o{program} did not start:\n" . $self->log if time > $deadline || waitpid($pid, 1) == $pid;
        sleep 0.2;
    }
    return $self;
}

sub url { "http://127.0.0.1:$_[0]{port}$_[1]" }

sub uri_escape { my ($s) = @_; $s =~ s/([^A-Za-z0-9\-._~])/sprintf('%%%02X', ord $1)/ge; $s }
sub dir { $_[0]{dir} }
sub log { read_file_text("$_[0]{dir}/server.log") // '' }

# GET a path: its decoded JSON body, or undef.
sub get_json {
    my ($self, $path) = @_;
    my $r = $self->{ua}->get($self->url($path));
    return $r->{success} ? eval { decode_json($r->{content}) } : undef;
}

# GET a Prometheus API path: the decoded {data}, or undef.
sub api {
    my ($self, $path) = @_;
    my $r = $self->{ua}->get($self->url($path));
    return undef unless $r->{success};
    my $body = eval { decode_json($r->{content}) } or return undef;
    return $body->{status} eq 'success' ? $body->{data} : undef;
}

# An instant query's result vector (a list of {metric, value}), or an empty
# list; dies on a query Prometheus refuses, with its reason.
sub query {
    my ($self, $expr) = @_;
    my $r = $self->{ua}->get($self->url('/api/v1/query?query=' . uri_escape($expr)));
    my $body = eval { decode_json($r->{content}) } // {};
    die "query refused: $expr: " . ($body->{error} // $r->{status}) . "\n" unless $r->{success};
    return @{ $body->{data}{result} // [] };
}

# Waits up to SECONDS for CODE to return true, polling every half second.
sub wait_for {
    my ($self, $seconds, $code) = @_;
    my $deadline = time + $seconds;
    while (time < $deadline) {
        my $ok = $code->();
        return $ok if $ok;
        sleep 0.5;
    }
    return undef;
}

sub stop {
    my ($self) = @_;
    return unless $self->{pid};
    kill 'TERM', $self->{pid};
    waitpid $self->{pid}, 0;
    delete $self->{pid};
}

sub DESTROY { $_[0]->stop }

1;
