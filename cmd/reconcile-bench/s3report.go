package main

import (
	"fmt"
	"io"
	"runtime"
	"slices"
	"strings"
	"text/tabwriter"
)

// printReport prints the S3 benchmark's figures: rows per second of each
// algorithm (median and every run), the ratios, and the S3 requests.
func (s *s3Bench) printReport(w io.Writer, results []s3Result) {
	o := s.opts.s3
	fmt.Fprintf(w, "reconcile-bench -s3: PostgreSQL %s; %d CPUs; S3 server %s through toxiproxy, %s added each way (a request's round trip: %.1f ms)\n",
		s.version, runtime.NumCPU(), o.endpoint, o.latency, float64(s.rtt.Microseconds())/1000)
	fmt.Fprintf(w, "reconcile: %s\n", s.opts.reconcile)
	if o.baseline != "" {
		fmt.Fprintf(w, "baseline:  %s\n", o.baseline)
	}
	fmt.Fprintf(w, "each run: a fresh database (migrated by the binary timed) and bucket; the due rows plus as many not due; one 1-4 KB object per row under %s; objects %s old or more when timing starts\n",
		s3Prefix, settle)
	if o.derived {
		fmt.Fprintf(w, "with imagekit files: the same rows, each with %d more objects of its size under %sCACHE/images/<key without ext>/, and RECONCILE_TABLE_DERIVED=imagekit (reconcile migrate included)\n",
			len(derivedSpecs), s3Prefix)
	}

	fmt.Fprintln(w)
	if s.opts.runs > 1 {
		fmt.Fprintf(w, "purge of the due rows through the proxy: median of %d runs, in alternating order\n", s.opts.runs)
	} else {
		fmt.Fprintln(w, "purge of the due rows through the proxy")
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "algorithm\tdue rows\tseconds\trows/s\truns (rows/s)\t")
	byName := make(map[string]s3Result)
	for _, r := range results {
		byName[r.algorithm] = r
		m := r.median()
		fmt.Fprintf(tw, "%s\t%d\t%.3f\t%.0f\t%s\t\n", r.label, r.due, m.Seconds(), float64(r.due)/m.Seconds(), rates(r))
	}
	tw.Flush()

	rec := byName[s3Reconcile]
	fmt.Fprintln(w)
	if base, ok := byName[s3Baseline]; ok {
		var each []string
		for i := range min(len(rec.times), len(base.times)) {
			each = append(each, fmt.Sprintf("%.2f", rate(rec.result, i)/rate(base.result, i)))
		}
		fmt.Fprintf(w, "reconcile / baseline, rows/s: %.2fx  (run by run: %s)\n",
			base.median().Seconds()/rec.median().Seconds()*float64(rec.due)/float64(base.due), strings.Join(each, " "))
	}
	if der, ok := byName[s3Derived]; ok {
		ratio := (float64(der.due) / der.median().Seconds()) / (float64(rec.due) / rec.median().Seconds())
		var each []string
		for i := range min(len(rec.times), len(der.times)) {
			each = append(each, fmt.Sprintf("%.2f", rate(der.result, i)/rate(rec.result, i)))
		}
		fmt.Fprintf(w, "with imagekit files / without, rows/s: %.2fx  (target >= 0.5, within 2x: %s; run by run: %s)\n",
			ratio, verdict(ratio >= 0.5), strings.Join(each, " "))
	}
	if cron, ok := byName[s3Cron]; ok {
		fmt.Fprintf(w, "reconcile / cron per-row, rows/s: %.1fx\n",
			(float64(rec.due)/rec.median().Seconds())/(float64(cron.due)/cron.median().Seconds()))
	}

	if o.accessLog == "" {
		return
	}
	fmt.Fprintln(w)
	fmt.Fprintln(w, "S3 requests of a run (the server's access log)")
	tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	for _, r := range results {
		var seen []string
		for _, counts := range r.requests {
			if f := formatRequests(counts); !slices.Contains(seen, f) {
				seen = append(seen, f)
			}
		}
		fmt.Fprintf(tw, "%s\t%s\n", r.label, strings.Join(seen, "; "))
	}
	tw.Flush()
}

// rate is run i's rows per second.
func rate(r result, i int) float64 {
	return float64(r.due) / r.times[i].Seconds()
}

// rates lists every run's rows per second.
func rates(r s3Result) string {
	var each []string
	for i := range r.times {
		each = append(each, fmt.Sprintf("%.0f", rate(r.result, i)))
	}
	return strings.Join(each, " ")
}
