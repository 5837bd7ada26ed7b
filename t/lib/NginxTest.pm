package NginxTest;

# A small harness in the manner of nginx-tests' Test::Nginx, on core Perl only
# (Test::Nginx cannot be installed here): a temp prefix per test file, free
# loopback ports, %%PLACEHOLDERS%% in configs, run/stop/reload, try_run for
# configs that must fail, and an error.log check at the end of every file.

use warnings;
use strict;

use Cwd qw(abs_path);
use File::Basename qw(dirname);
use File::Path qw(make_path);
use File::Temp qw(tempdir);
use HTTP::Tiny;
use IO::Socket::INET;
use JSON::PP;
use POSIX qw(WNOHANG);
use Test::More;
use Time::HiRes qw(sleep time);

use Exporter 'import';
our @EXPORT_OK = qw(proc_status_bytes read_file_text smaps_rss_of_size);

our $ROOT = abs_path(dirname(__FILE__) . '/../..');
our $NGINX = $ENV{TEST_NGINX_BINARY} // '/usr/sbin/nginx';
our $MODULE = $ENV{TEST_NGINX_MODULE}
    // "$ROOT/target/release/libngx_http_memory_status_module.so";
# Where the Lua, NDK, stream and njs modules are: Debian's by default; another
# build under test sets TEST_NGINX_MODULES_DIR (and TEST_NGINX_BINARY).
our $MODULES_DIR = $ENV{TEST_NGINX_MODULES_DIR} // '/usr/lib/nginx/modules';

# The version of the nginx under test, as it says itself (answers must match).
sub nginx_version {
    my $v = qx{$NGINX -v 2>&1} // '';
    return $v =~ m{nginx/(\S+)} ? $1 : undef;
}
# Every JSON answer the tests get is kept here; t/99-schema.t validates them all.
our $SPOOL = $ENV{TEST_JSON_SPOOL} // "$ROOT/t/tmp/answers";
my $spooled = 0;

sub new {
    my ($class) = @_;
    my $dir = tempdir('nginx-memory-status-XXXXXX', TMPDIR => 1,
        CLEANUP => !$ENV{TEST_NGINX_LEAVE});
    # Workers run as nobody when the tests run as root: let them in.
    chmod 0755, $dir;
    my $self = bless { prefix => $dir, ports => {} }, $class;
    die "module not built: $MODULE\n" unless -f $MODULE;
    return $self;
}

sub prefix { $_[0]{prefix} }

sub has_lua { -f "$MODULES_DIR/ngx_http_lua_module.so" }

# A loopback port nobody listens on, the same one for the same index.
sub port {
    my ($self, $n) = @_;
    return $self->{ports}{$n} //= do {
        my $s = IO::Socket::INET->new(LocalAddr => '127.0.0.1', LocalPort => 0,
            Listen => 1, ReuseAddr => 1) or die "no free port: $!";
        my $p = $s->sockport;
        close $s;
        $p;
    };
}

sub expand {
    my ($self, $text) = @_;
    my $p = $self->{prefix};
    my %subst = (
        TEST_GLOBALS => "pid $p/nginx.pid;\nerror_log $p/error.log notice;",
        TEST_GLOBALS_HTTP => join("\n",
            'access_log off;',
            map({ "${_}_temp_path $p/${_}_temp;" }
                qw(client_body proxy fastcgi uwsgi scgi))),
        LOAD_MODULE => "load_module $MODULE;",
        LOAD_LUA => "load_module $MODULES_DIR/ndk_http_module.so;\n"
            . "load_module $MODULES_DIR/ngx_http_lua_module.so;",
        LOAD_STREAM => "load_module $MODULES_DIR/ngx_stream_module.so;",
        PREFIX => $p,
    );
    $text =~ s/%%PORT_(\d+)%%/$self->port($1)/ge;
    $text =~ s/%%([A-Z_]+)%%/exists $subst{$1} ? $subst{$1} : die "unknown placeholder %%$1%%\n"/ge;
    return $text;
}

sub write_file {
    my ($self, $name, $content) = @_;
    my $path = "$self->{prefix}/$name";
    make_path(dirname($path));
    open my $fh, '>', $path or die "write $path: $!";
    print $fh $content;
    close $fh;
    return $self;
}

sub write_file_expand {
    my ($self, $name, $content) = @_;
    return $self->write_file($name, $self->expand($content));
}

# The configuration most tests run, with placeholders (write it with
# write_file_expand, or use write_standard_conf): what is loaded, the test
# globals, worker_processes, events, and an http block with one server whose
# first location is the status location. A test states only what differs:
#
#   workers      worker_processes (1); connections: worker_connections (128)
#   main         more main-level lines (before worker_processes)
#   http         more http-level lines (before the server)
#   listen       the server's listen arguments, a string or a list
#                ('%%PORT_1%%'); each becomes listen 127.0.0.1:ARG;
#   status       the status location's path ('/memory_status'); 0: none
#   server       more server-level lines (after the status location)
#   servers      more server blocks, after that one (a string or a list)
#   stream       the body of a stream block (loads the stream module)
#   lua          load Debian's Lua module (and NDK) before ours: pass
#                NginxTest::has_lua() where Lua is optional
#   lua_http, lua_server
#                lines that need Lua (dicts, Lua locations): written where
#                http and server lines go, only when Lua is loaded
#   load         what is loaded, in order, instead of the default (lua,
#                stream, module): 'lua', 'stream', 'module' or a literal line
sub standard_conf {
    my (%o) = @_;
    my %known = map { $_ => 1 } qw(workers connections main http listen status server servers
        stream lua lua_http lua_server load);
    my @unknown = grep { !$known{$_} } sort keys %o;
    die "standard_conf: unknown option(s) @unknown\n" if @unknown;
    my @load = $o{load}
        ? @{ $o{load} }
        : (($o{lua} ? 'lua' : ()), (defined $o{stream} ? 'stream' : ()), 'module');
    my %placeholder = (lua => '%%LOAD_LUA%%', stream => '%%LOAD_STREAM%%', module => '%%LOAD_MODULE%%');
    my $lua = grep { $_ eq 'lua' } @load;
    my $status = $o{status} // '/memory_status';
    my @listen = ref $o{listen} ? @{ $o{listen} } : ($o{listen} // '%%PORT_1%%');
    my @servers = ref $o{servers} ? @{ $o{servers} } : ($o{servers} // ());
    my $conf = join '',
        map({ ($placeholder{$_} // $_) . "\n" } @load),
        "%%TEST_GLOBALS%%\n",
        conf_lines(0, $o{main}),
        'worker_processes ' . ($o{workers} // 1) . ";\n",
        'events { worker_connections ' . ($o{connections} // 128) . "; }\n",
        "http {\n",
        "    %%TEST_GLOBALS_HTTP%%\n",
        conf_lines(1, $lua ? $o{lua_http} : undef),
        conf_lines(1, $o{http}),
        "    server {\n",
        map({ "        listen 127.0.0.1:$_;\n" } @listen),
        ($status ? "        location = $status { memory_status; }\n" : ''),
        conf_lines(2, $o{server}),
        conf_lines(2, $lua ? $o{lua_server} : undef),
        "    }\n",
        map({ conf_lines(1, $_) } @servers),
        "}\n",
        (defined $o{stream} ? ("stream {\n", conf_lines(1, $o{stream}), "}\n") : ());
    return $conf;
}

# Lines given as a string (a heredoc, any indentation) or a list of them,
# each indented to the block's depth.
sub conf_lines {
    my ($depth, $text) = @_;
    return '' unless defined $text;
    return join '', map { conf_lines($depth, $_) } @$text if ref $text;
    my @lines = split /\n/, $text;
    my ($common) = sort { length $a <=> length $b } map { /^([ \t]*)\S/ ? $1 : () } @lines;
    $common //= '';
    my $indent = '    ' x $depth;
    return join '', map { /\S/ ? $indent . s/^\Q$common\E//r . "\n" : "\n" } @lines;
}

# An http-level line for a shared zone a test needs by name, not for Lua: a
# Lua dict where Debian's Lua module is (load it then: lua => has_lua()),
# else a limit_req zone.
sub zone_line {
    my ($name, $size) = @_;
    return has_lua()
        ? "lua_shared_dict $name $size;"
        : "limit_req_zone \$binary_remote_addr zone=$name:$size rate=1r/s;";
}

# Writes nginx.conf: standard_conf(%o), placeholders expanded.
sub write_standard_conf {
    my ($self, %o) = @_;
    return $self->write_file_expand('nginx.conf', standard_conf(%o));
}

sub nginx_cmd {
    my ($self, @extra) = @_;
    my $p = $self->{prefix};
    return ($NGINX, '-p', "$p/", '-c', "$p/nginx.conf", '-e', "$p/error.log", @extra);
}

# TEST_NGINX_VALGRIND=1: nginx runs under Valgrind's memcheck (every process,
# one log each); done_file then fails on any error memcheck reports that the
# suppressions in t/valgrind.supp do not explain.
our $VALGRIND = $ENV{TEST_NGINX_VALGRIND};
our $WAIT_SECONDS = $VALGRIND ? 120 : 10;

sub valgrind_prefix {
    my ($self) = @_;
    return () unless $VALGRIND;
    return ('valgrind', '--tool=memcheck', '--quiet', '--num-callers=40',
        '--error-limit=no', "--suppressions=$ROOT/t/valgrind.supp",
        '--log-file=' . $self->{prefix} . '/valgrind.%p.log');
}

# memcheck's reports, one per log that has any: (file, text).
sub valgrind_reports {
    my ($self) = @_;
    my @reports;
    for my $log (glob "$self->{prefix}/valgrind.*.log") {
        my $text = read_file_text($log) // next;
        push @reports, [$log, $text] if $text =~ /\S/;
    }
    return @reports;
}

# Checks the configuration without starting: (ok, output of nginx -t).
sub try_run {
    my ($self) = @_;
    my @cmd = $self->nginx_cmd('-t');
    my $out = qx{@cmd 2>&1};
    return ($? == 0, $out);
}

# Starts nginx (daemonized) and waits for its processes and ports.
# single => 1: master_process off, so there are no workers to wait for.
# env => {...}: environment for nginx (LD_PRELOAD reaches the workers too).
# prefix => [...]: a command nginx is started under (a cgroup's, say).
sub run {
    my ($self, %opt) = @_;
    my @cmd = (@{ $opt{prefix} // [] }, $self->valgrind_prefix, $self->nginx_cmd());
    @cmd = map { my $a = $_; $a =~ s/'/'\\''/g; "'$a'" } @cmd if $opt{prefix};
    local %ENV = (%ENV, %{ $opt{env} // {} });
    my $out = qx{@cmd 2>&1};
    die "nginx failed to start:\n$out\n" . $self->error_log_tail if $?;
    $self->{running} = 1;
    my $want = $opt{single} ? 0 : $self->configured_workers;
    $self->wait_for(sub {
        my @w = $self->worker_pids;
        $self->master_pid && @w >= $want;
    }, 'nginx processes');
    $self->wait_for_ports;
    return $self;
}

# worker_processes of the configuration (nginx's default is 1).
sub configured_workers {
    my ($self) = @_;
    my $conf = read_file_text("$self->{prefix}/nginx.conf") // '';
    return $conf =~ /^\s*worker_processes\s+(\d+)\s*;/m ? $1 : 1;
}

sub master_pid {
    my ($self) = @_;
    my $pid = read_file_text($self->{pid_file} // "$self->{prefix}/nginx.pid") // return;
    chomp $pid;
    return ($pid =~ /^\d+$/ && kill(0, $pid)) ? $pid : undef;
}

# Worker processes of the running master (children that are nginx workers).
sub worker_pids {
    my ($self) = @_;
    my $master = $self->master_pid or return;
    return workers_of($master);
}

# The worker processes of a master; running => 1: only those not shutting
# down. Under valgrind the title nginx sets is not in cmdline: every child.
sub workers_of {
    my ($master, %opt) = @_;
    my $title = $opt{running} ? qr/^nginx: worker process\0*$/ : qr/^nginx: worker process/;
    my @pids;
    for my $dir (glob '/proc/[0-9]*') {
        my ($pid) = $dir =~ m{(\d+)$};
        next unless parent_of($pid) == $master;
        my $cmd = read_file_text("$dir/cmdline") // next;
        push @pids, $pid if $cmd =~ $title || ($VALGRIND && $cmd =~ m{^\S*valgrind});
    }
    return sort { $a <=> $b } @pids;
}

# A process's parent, from /proc/PID/stat (0 when it is gone).
sub parent_of {
    my ($pid) = @_;
    my $stat = read_file_text("/proc/$pid/stat") // return 0;
    return $stat =~ /^\d+ \(.*\) \S (\d+)/ ? $1 : 0;
}

sub wait_for_ports {
    my ($self) = @_;
    for my $port (values %{ $self->{ports} }) {
        $self->wait_for(sub {
            IO::Socket::INET->new(PeerAddr => "127.0.0.1:$port", Timeout => 1)
        }, "port $port");
    }
}

sub wait_for {
    my ($self, $cond, $what) = @_;
    my $deadline = time + $WAIT_SECONDS;
    while (time < $deadline) {
        return 1 if $cond->();
        sleep 0.05;
    }
    die "timed out waiting for $what\n" . $self->error_log_tail;
}

# Sends HUP and waits until every old worker is gone and new ones are up.
sub reload {
    my ($self) = @_;
    my %old = map { $_ => 1 } $self->worker_pids;
    kill 'HUP', $self->master_pid;
    my $want = $self->configured_workers;
    $self->wait_for(sub {
        my @now = $self->worker_pids;
        @now >= $want && !grep { $old{$_} } @now;
    }, 'new workers after reload');
    return $self;
}

sub stop {
    my ($self) = @_;
    return $self unless $self->{running};
    my $master = $self->master_pid;
    if ($master) {
        kill 'QUIT', $master;
        my $deadline = time + $WAIT_SECONDS;
        sleep 0.05 while kill(0, $master) && time < $deadline;
        kill 'KILL', $master if kill 0, $master;
    }
    $self->{running} = 0;
    return $self;
}

sub error_log { read_file_text($_[0]{error_log} // "$_[0]{prefix}/error.log") // '' }

sub error_log_tail {
    my @lines = split /\n/, $_[0]->error_log;
    return join("\n", @lines > 30 ? @lines[-30 .. -1] : @lines) . "\n";
}

# Ends a test file: stop nginx, and no [alert] or worse may be in error.log.
sub done {
    my ($self) = @_;
    $self->done_file;
    done_testing();
}

# The same for one of several nginx instances in a file. allow => [qr/.../]:
# lines a test provoked on purpose.
sub done_file {
    my ($self, %opt) = @_;
    $self->stop;
    my @allowed = @{ $opt{allow} // [] };
    my @bad = grep {
        my $line = $_;
        /\[(alert|crit|emerg)\]/ && !grep { $line =~ $_ } @allowed
    } split /\n/, $self->error_log;
    is(scalar @bad, 0, 'no [alert], [crit] or [emerg] in error.log')
        or diag(join "\n", @bad);
    if ($VALGRIND) {
        my @reports = $self->valgrind_reports;
        is(scalar @reports, 0, 'memcheck: no error')
            or diag(join "\n", map { "$_->[0]:\n" . substr($_->[1], 0, 6000) } @reports);
    }
}

sub DESTROY { $_[0]->stop }

# --- HTTP -------------------------------------------------------------------

sub http {
    my ($self, $method, $port, $path, %opt) = @_;
    my $ua = HTTP::Tiny->new(timeout => $WAIT_SECONDS, keep_alive => 0);
    return $ua->request($method, "http://127.0.0.1:$port$path", \%opt);
}

# Sends a request as given and returns everything the server wrote until it closed.
sub raw_http {
    my ($self, $port, $request) = @_;
    my $s = IO::Socket::INET->new(PeerAddr => "127.0.0.1:$port", Timeout => 10)
        or die "connect $port: $!";
    print $s $request;
    local $/;
    my $reply = <$s>;
    return $reply // '';
}

# A GET sent now whose reply is read later (`read_reply`): the socket.
sub send_request {
    my ($port, $path, %headers) = @_;
    my $s = IO::Socket::INET->new(PeerAddr => "127.0.0.1:$port", Timeout => 10)
        or die "connect $port: $!";
    print $s "GET $path HTTP/1.0\r\nHost: localhost\r\n"
        . join('', map { "$_: $headers{$_}\r\n" } sort keys %headers) . "\r\n";
    return $s;
}

# The reply to `send_request`, read until the server closes: its status
# ('closed' when none came) and, in list context, its body.
sub read_reply {
    my ($s) = @_;
    local $/;
    my $reply = <$s> // '';
    my ($head, $body) = split /\r\n\r\n/, $reply, 2;
    my $status = ($head // '') =~ m{^HTTP/1\.\d (\d+)} ? $1 : 'closed';
    return wantarray ? ($status, $body // '') : $status;
}

sub get { my ($self, $port, $path) = @_; $self->http('GET', $port, $path) }

# GET a path and decode its JSON body; dies with the response if it is not JSON.
sub get_json {
    my ($self, $port, $path) = @_;
    my $res = $self->get($port, $path);
    my $json = eval { decode_json($res->{content}) };
    die "not JSON ($res->{status}): $res->{content}\n" unless $json;
    spool_answer($res->{content});
    return ($json, $res);
}

sub spool_answer {
    my ($content) = @_;
    make_path($SPOOL);
    my $name = sprintf '%s/%s-%d-%04d.json', $SPOOL, (split m{/}, $0)[-1], $$, ++$spooled;
    open my $fh, '>', $name or die "spool $name: $!";
    print $fh $content;
    close $fh;
}

# --- /proc helpers ----------------------------------------------------------

sub read_file_text {
    my ($path) = @_;
    open my $fh, '<', $path or return undef;
    local $/;
    my $text = <$fh>;
    return $text;
}

# The Rss of the one mapping of exactly that size in /proc/PID/smaps (undef if
# none or several).
sub smaps_rss_of_size {
    my ($pid, $size) = @_;
    my $smaps = read_file_text("/proc/$pid/smaps") // return undef;
    my @found;
    for my $block (split /(?=^[0-9a-f]+-[0-9a-f]+ )/m, $smaps) {
        my ($lo, $hi) = $block =~ /^([0-9a-f]+)-([0-9a-f]+) / or next;
        no warnings 'portable';
        next unless hex($hi) - hex($lo) == $size;
        push @found, ($block =~ /^Rss:\s+(\d+) kB/m)[0] * 1024;
    }
    return @found == 1 ? $found[0] : undef;
}

# A /proc/PID/status value in bytes (kB fields) or as a count.
sub proc_status_bytes {
    my ($pid, $key) = @_;
    my $text = read_file_text("/proc/$pid/status") // return undef;
    my ($n, $unit) = $text =~ /^\Q$key\E:\s+(\d+)(?:\s+(kB))?$/m or return undef;
    return $unit ? $n * 1024 : $n;
}

1;
