package bench_test

// The charts are drawn by package bench/chart, which registers itself when
// imported; this import does it for every test of package bench, so the
// report tests check real PNG files.
import _ "github.com/dualgate/dualgate/bench/chart"
