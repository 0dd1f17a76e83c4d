package bench

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

const exposition = `# HELP go_memstats_heap_inuse_bytes Number of heap bytes that are in use.
# TYPE go_memstats_heap_inuse_bytes gauge
go_memstats_heap_inuse_bytes_total_fake 1
go_memstats_heap_inuse_bytes 7.471104e+06
process_resident_memory_bytes{pid="7"} 2.5e+07
`

func TestParseGauge(t *testing.T) {
	tests := []struct {
		name    string
		metric  string
		want    float64
		wantErr error
	}{
		{name: "plain sample", metric: HeapMetric, want: 7471104},
		{name: "with labels", metric: "process_resident_memory_bytes", want: 25e6},
		{name: "missing", metric: "go_goroutines", wantErr: ErrNoField},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseGauge(strings.NewReader(exposition), tt.metric)
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("err = %v, want %v", err, tt.wantErr)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("ParseGauge = %v, %v; want %v", got, err, tt.want)
			}
		})
	}
	if _, err := ParseGauge(strings.NewReader("x abc\n"), "x"); err == nil {
		t.Fatal("bad value: want error")
	}
}

func TestScrapeGauge(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/metrics" {
			http.NotFound(w, r)
			return
		}
		fmt.Fprint(w, exposition)
	}))
	defer srv.Close()
	got, err := ScrapeGauge(context.Background(), srv.Client(), srv.URL+"/metrics", HeapMetric)
	if err != nil || got != 7471104 {
		t.Fatalf("ScrapeGauge = %v, %v", got, err)
	}
	if _, err := ScrapeGauge(context.Background(), srv.Client(), srv.URL+"/nope", HeapMetric); err == nil {
		t.Fatal("404: want error")
	}
}
