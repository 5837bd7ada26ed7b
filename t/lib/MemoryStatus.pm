package MemoryStatus;

# Checks of the JSON answer shared by the test files.

use warnings;
use strict;

use B ();
use Exporter 'import';
use JSON::PP ();
use Test::More;
use NginxTest ();

our @EXPORT_OK = qw(is_uint is_uint_or_null check_base_shape unexpected_errors resident_sum @OWNERS);

# A JSON number that is a non-negative integer (not a string that looks like one).
sub is_uint {
    my ($v) = @_;
    return 0 unless defined $v && !ref $v;
    my $flags = B::svref_2object(\$v)->FLAGS;
    return 0 if $flags & B::SVp_POK;
    return ($flags & (B::SVp_IOK | B::SVp_NOK)) && $v =~ /^\d+$/ ? 1 : 0;
}

sub is_uint_or_null { !defined $_[0] || is_uint($_[0]) }

our @PROCESS_FIELDS = qw(virtual_bytes resident_bytes resident_anon_bytes
    resident_file_bytes resident_shmem_bytes swap_bytes peak_virtual_bytes
    peak_resident_bytes threads);

# The breakdown's owners, as the schema lists them (one list: the schema's);
# `unattributed` is the rest, not an owner.
our @OWNERS = do {
    my $schema = JSON::PP->new->decode(
        NginxTest::read_file_text("$NginxTest::ROOT/schema/memory_status.schema.json"));
    grep { $_ ne 'unattributed' } @{ $schema->{'$defs'}{breakdown}{required} };
};

# The owners' resident_bytes plus unattributed's: what the rule says is RSS.
sub resident_sum {
    my ($j) = @_;
    my $b = $j->{breakdown} or return undef;
    my $sum = $b->{unattributed}{resident_bytes} // 0;
    $sum += $b->{$_}{resident_bytes} // 0 for grep { $b->{$_} } @OWNERS;
    return $sum;
}

# Every field of the foundation's JSON is present and of its type.
sub check_base_shape {
    my ($j, $name) = @_;
    is($j->{schema}, 1, "$name: schema 1");
    is($j->{nginx}{version}, NginxTest::nginx_version(), "$name: nginx version (the binary's own)");
    like($j->{nginx}{module_version}, qr/^\d+\.\d+\.\d+/, "$name: module_version");
    ok(is_uint($j->{nginx}{pid}), "$name: pid is an integer");
    ok(is_uint($j->{nginx}{worker}), "$name: worker is an integer");
    like($j->{nginx}{role}, qr/^(worker|single)$/, "$name: role");
    ok(is_uint($j->{collected_at_ms}), "$name: collected_at_ms is an integer");
    my $now_ms = int(Time::HiRes::time() * 1000);
    ok(abs($now_ms - $j->{collected_at_ms}) < 60_000, "$name: collected_at_ms is now");
    for my $f (@PROCESS_FIELDS) {
        ok(exists $j->{process}{$f} && is_uint($j->{process}{$f}), "$name: process.$f is an integer");
    }
    is(ref $j->{errors}, 'ARRAY', "$name: errors is an array");
    my @unexpected = unexpected_errors($j);
    is(scalar @unexpected, 0, "$name: no source errors but absent modules")
        or diag explain \@unexpected;
}

# Errors other than notes of what is absent by design here: a Lua module not
# loaded (Debian has no stream Lua module at all), no jemalloc or tcmalloc, a
# worker that has not published its summary yet, a master this worker may not
# read the PSS of (whose share of the server is then estimated, and a worker's
# in its first 200 ms).
sub unexpected_errors {
    my ($j) = @_;
    return grep {
        !($_->{source} =~ /^lua\.(http|stream)$/ && $_->{error} =~ /^ngx_(http|stream)_lua_module is not loaded$/)
        && !($_->{source} eq 'breakdown.other_allocators' && $_->{error} =~ /^not present/)
        # A worker's first summary comes 200 ms after it starts.
        && !($_->{source} =~ /^processes\.\d+\.memory$/ && $_->{error} =~ /^not published yet/)
        # detail=full: workers that are not root may not read the root master's
        # smaps_rollup (t/17 checks this case itself).
        && !($_->{source} =~ /^processes\.\d+$/ && $_->{error} =~ m{^/proc/\d+/smaps_rollup: Permission denied})
        && !($_->{source} eq 'server.resident_bytes' && $_->{error} =~ /^no PSS known for [^:]+: estimated as RssAnon/)
    } @{ $j->{errors} };
}

1;
