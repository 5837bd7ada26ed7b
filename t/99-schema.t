#!/usr/bin/perl

# Every JSON answer the other test files got is valid against the JSON Schema
# (draft 2020-12, checked by python3-jsonschema), and every field the schema
# names is documented in the README.

use warnings;
use strict;

use FindBin;
use lib "$FindBin::Bin/lib";

use File::Temp ();
use JSON::PP qw(decode_json);
use Test::More;
use NginxTest qw(read_file_text);

my $schema_file = "$NginxTest::ROOT/schema/memory_status.schema.json";
my $schema = decode_json(read_file_text($schema_file));

# --- every spooled answer validates ---------------------------------------------

my @answers = glob "$NginxTest::SPOOL/*.json";
SKIP: {
    skip 'no answers spooled: run the other test files first', 3 unless @answers;
    ok(@answers > 50, scalar(@answers) . ' JSON answers from this run to validate');
    my $validator = <<'PY';
import glob, json, sys
from jsonschema import Draft202012Validator
schema = json.load(open(sys.argv[1]))
Draft202012Validator.check_schema(schema)
validator = Draft202012Validator(schema)
bad = 0
paths = sorted(glob.glob(sys.argv[2] + "/*.json"))
for path in paths:
    for error in validator.iter_errors(json.load(open(path))):
        bad += 1
        print(f"{path}: {'/'.join(map(str, error.absolute_path))}: {error.message[:300]}")
print(f"checked {len(paths)}, invalid {bad}")
PY
    my $script = File::Temp->new(SUFFIX => '.py');
    print $script $validator;
    close $script;
    # The spool by its directory: a run's answers are more than a command line holds.
    my $out = qx{/usr/bin/python3 $script '$schema_file' '$NginxTest::SPOOL' 2>&1};
    is($?, 0, 'the schema is a valid draft 2020-12 schema and the validator ran') or diag $out;
    like($out, qr/^checked \d+, invalid 0$/m, 'every answer is valid against the schema') or diag $out;
}

# --- every schema field is documented --------------------------------------------

my %fields;
sub collect {
    my ($node) = @_;
    if (ref $node eq 'HASH') {
        if (ref $node->{properties} eq 'HASH') {
            $fields{$_} = 1 for keys %{ $node->{properties} };
        }
        collect($_) for values %$node;
    } elsif (ref $node eq 'ARRAY') {
        collect($_) for @$node;
    }
}
collect($schema->{'$defs'});
my $readme = read_file_text("$NginxTest::ROOT/README.md");
ok(keys %fields > 80, scalar(keys %fields) . ' field names in the schema');
# A field is documented where the README names it as a field: a code span
# that is a whole field path (`rss_bytes`, `trends[].series`, `{a,b}_bytes`
# spelled out), or a key of the example answer (`"rss_bytes":`). A word that
# only appears inside a sentence or a configuration line does not count.
my %documented;
for my $span ($readme =~ /`([^`\n]+)`/g) {
    next unless $span =~ /^[a-z0-9_.\[\]]+$/;
    $documented{$_} = 1 for grep { length } split /[.\[\]]+/, $span;
}
$documented{$_} = 1 for $readme =~ /^\s*"([a-z0-9_]+)":/mg;
for my $field (sort keys %fields) {
    ok($documented{$field}, "README documents `$field` as a field");
}

done_testing();
