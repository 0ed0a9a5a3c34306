package main

import (
	"fmt"
	"io"
	"runtime"
	"strings"
	"text/tabwriter"
	"time"
)

func (b *bench) printHeader(w io.Writer) {
	migrated := "tables prepared by `reconcile migrate`"
	if b.opts.reconcile == "" {
		migrated = "no `reconcile migrate` (no -reconcile): not comparable with reconcile"
	}
	fmt.Fprintf(w, "reconcile-bench: %d rows, retention 30 days; PostgreSQL %s; %d CPUs; %s\n",
		b.opts.rows, b.version, runtime.NumCPU(), migrated)
}

func printTimes(w io.Writer, results []result, runs int) {
	if len(results) == 0 {
		return
	}
	fmt.Fprintln(w)
	if runs > 1 {
		fmt.Fprintf(w, "purge of the due rows: median of %d runs, each on freshly seeded data\n", runs)
	} else {
		fmt.Fprintln(w, "purge of the due rows, on freshly seeded data")
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	header := "algorithm\tdue rows\tseconds\trows/s\t"
	if runs > 1 {
		header += "runs (s)\t"
	}
	fmt.Fprintln(tw, header)
	byName := make(map[string]time.Duration)
	for _, r := range results {
		m := r.median()
		byName[r.algorithm] = m
		line := fmt.Sprintf("%s\t%d\t%.3f\t%.0f\t", r.label, r.due, m.Seconds(), float64(r.due)/m.Seconds())
		if runs > 1 {
			var each []string
			for _, t := range r.times {
				each = append(each, fmt.Sprintf("%.3f", t.Seconds()))
			}
			line += strings.Join(each, " ") + "\t"
		}
		fmt.Fprintln(tw, line)
	}
	tw.Flush()

	cron, hasCron := byName[algoCron]
	rec, hasRec := byName[algoReconcile]
	floor, hasFloor := byName[algoFloor]
	fmt.Fprintln(w)
	if hasCron && hasRec {
		ratio := cron.Seconds() / rec.Seconds()
		fmt.Fprintf(w, "per-row / reconcile: %6.2fx  (target >= 15x: %s)\n", ratio, verdict(ratio >= 15))
	}
	if hasRec && hasFloor {
		ratio := rec.Seconds() / floor.Seconds()
		fmt.Fprintf(w, "reconcile / floor:   %6.2f   (target <= 1.0: %s)\n", ratio, verdict(ratio <= 1.0))
	}
	if hasCron && hasFloor {
		fmt.Fprintf(w, "per-row / floor:     %6.2fx\n", cron.Seconds()/floor.Seconds())
	}
}

func printMemory(w io.Writer, mem []memResult) {
	if len(mem) == 0 {
		return
	}
	fmt.Fprintln(w)
	fmt.Fprintf(w, "memory of reconcile --rescan, every row due (sampled every %s)\n", sampleEvery)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "due rows\tseconds\tpeak RssAnon\tpeak RssFile\tpeak VmHWM\tmaxrss\t")
	for _, m := range mem {
		fmt.Fprintf(tw, "%d\t%.3f\t%s\t%s\t%s\t%s\t\n", m.rows, m.elapsed.Seconds(),
			mib(m.peaks.rssAnon), mib(m.peaks.rssFile), mib(m.peaks.vmHWM), mib(m.maxRSS))
	}
	tw.Flush()

	small, large := mem[0], mem[0]
	for _, m := range mem {
		if m.rows < small.rows {
			small = m
		}
		if m.rows > large.rows {
			large = m
		}
	}
	if large.rows > small.rows && small.peaks.rssAnon > 0 {
		fmt.Fprintf(w, "\npeak RssAnon %d/%d: %.2fx  (rows grew %.0fx)\n", large.rows, small.rows,
			float64(large.peaks.rssAnon)/float64(small.peaks.rssAnon), float64(large.rows)/float64(small.rows))
	}
}

func verdict(ok bool) string {
	if ok {
		return "met"
	}
	return "MISSED"
}

func mib(b int64) string {
	if b == 0 {
		return "n/a"
	}
	return fmt.Sprintf("%.1f MiB", float64(b)/(1<<20))
}
