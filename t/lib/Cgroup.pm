package Cgroup;

# Memory cgroups for tests: a child of this process's own group (v2, or v1's
# memory controller), a command run inside one, and its files read as numbers.

use warnings;
use strict;

use Exporter 'import';
use NginxTest qw(read_file_text);

our @EXPORT_OK = qw(make_cgroup write_text in_cgroup cgroup_number cgroup_stat);

sub write_text {
    my ($file, $text) = @_;
    open my $fh, '>', $file or die "$file: $!";
    print $fh $text;
    close $fh or die "$file: $!";
}

# (directory, limit file) or (undef, undef, why not).
sub make_cgroup {
    my $cg = read_file_text('/proc/self/cgroup') // return (undef, undef, 'no /proc/self/cgroup');
    my ($v2) = $cg =~ /^0::(\S+)$/m;
    my ($v1) = $cg =~ /^\d+:(?:[^:]*,)?memory(?:,[^:]*)?:(\S+)$/m;
    my @tries;
    for my $root ('/sys/fs/cgroup', '/sys/fs/cgroup/unified') {
        my $controllers = read_file_text("$root/cgroup.controllers") // next;
        push @tries, ["$root$v2", 'memory.max'] if defined $v2 && $controllers =~ /\bmemory\b/;
    }
    push @tries, ["/sys/fs/cgroup/memory$v1", 'memory.limit_in_bytes'] if defined $v1;
    my $why = 'no memory controller';
    for my $try (@tries) {
        my ($parent, $file) = @$try;
        $parent =~ s{/$}{};
        my $dir = "$parent/ngx-memory-status-test-$$-" . int(rand(1e6));
        if (mkdir $dir) {
            return ($dir, $file) if -f "$dir/$file";
            rmdir $dir;
            $why = "$dir has no $file";
        } else {
            $why = "mkdir $dir: $!";
        }
    }
    return (undef, undef, $why);
}

# A command prefix that runs what follows inside the group $dir: its pages
# are charged there from its first one.
sub in_cgroup {
    my ($dir) = @_;
    return ('sh', '-c', qq{echo \$\$ > '$dir/cgroup.procs' && exec "\$@"}, 'sh');
}

# A file of the group holding one number.
sub cgroup_number {
    my ($dir, $file) = @_;
    my $text = read_file_text("$dir/$file") // return undef;
    return $text =~ /^(\d+)/ ? $1 : undef;
}

# memory.stat as a hash.
sub cgroup_stat {
    my ($dir) = @_;
    my %stat = map { /^(\S+) (\d+)$/ ? ($1 => $2) : () } split /\n/, read_file_text("$dir/memory.stat") // '';
    return \%stat;
}

1;
