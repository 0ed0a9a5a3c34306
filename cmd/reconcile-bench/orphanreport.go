package main

import (
	"fmt"
	"io"
	"runtime"
	"slices"
	"strings"
	"text/tabwriter"
	"time"
)

// printOrphans prints the orphan scan's figures: files per second of
// reconcile and of the floor at each size, their ratio, reconcile's peak
// memory at each size, and the S3 requests of a run when counted.
func printOrphans(w io.Writer, b *bench, st orphanStore, results []orphanResult) {
	fmt.Fprintf(w, "reconcile-bench -orphans: %s; PostgreSQL %s; %d CPUs\n", st.describe(), b.version, runtime.NumCPU())
	fmt.Fprintf(w, "reconcile: %s orphans --dry-run --format csv --output FILE\n", b.opts.reconcile)
	fmt.Fprintf(w, "floor:     listing sorted in byte order (%s), then psql \\copy of the keys, sort, comm -23\n", floorListingName(st))
	fmt.Fprintf(w, "each size: the rows' files over %d day folders under forum/attachments/, plus 1%% orphans; both find exactly the dataset's orphans (checked every run)\n", orphanFolders)

	fmt.Fprintln(w)
	if b.opts.runs > 1 {
		fmt.Fprintf(w, "orphan scan: median of %d runs on the same files, alternating floor and reconcile\n", b.opts.runs)
	} else {
		fmt.Fprintln(w, "orphan scan, on the same files")
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "files\torphans\treconcile s\tfiles/s\tfloor s\tfiles/s\treconcile/floor\treconcile runs (s)\tfloor runs (s)\t")
	for _, r := range results {
		rec, floor := medianRun(r.reconcile), medianRun(r.floor)
		fmt.Fprintf(tw, "%d\t%d\t%.2f\t%.0f\t%.2f\t%.0f\t%.2f\t%s\t%s\t\n", r.files, r.orphans,
			rec.Seconds(), float64(r.files)/rec.Seconds(), floor.Seconds(), float64(r.files)/floor.Seconds(),
			rec.Seconds()/floor.Seconds(), runSeconds(r.reconcile), runSeconds(r.floor))
	}
	tw.Flush()
	largest := results[len(results)-1]
	ratio := medianRun(largest.reconcile).Seconds() / medianRun(largest.floor).Seconds()
	fmt.Fprintf(w, "\nreconcile / floor at %d files: %.2f  (target <= 1.5: %s)\n", largest.files, ratio, verdict(ratio <= 1.5))

	fmt.Fprintln(w)
	fmt.Fprintf(w, "memory of reconcile orphans, highest of its runs (sampled every %s)\n", sampleEvery)
	tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "files\tpeak RssAnon\tpeak RssFile\tpeak VmHWM\t")
	for _, r := range results {
		p := peakRuns(r.reconcile)
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t\n", r.files, mib(p.rssAnon), mib(p.rssFile), mib(p.vmHWM))
	}
	tw.Flush()
	if small := results[0]; len(results) > 1 {
		sp, lp := peakRuns(small.reconcile), peakRuns(largest.reconcile)
		if sp.rssAnon > 0 {
			fmt.Fprintf(w, "\npeak RssAnon %d/%d files: %.2fx  (files grew %.0fx)\n", largest.files, small.files,
				float64(lp.rssAnon)/float64(sp.rssAnon), float64(largest.files)/float64(small.files))
		}
	}

	if largest.reconcile[0].requests == nil {
		return
	}
	fmt.Fprintln(w)
	fmt.Fprintln(w, "S3 requests of a run (the server's access log)")
	tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	for _, r := range results {
		for _, side := range []struct {
			name string
			runs []orphanRun
		}{{"reconcile", r.reconcile}, {"floor", r.floor}} {
			var seen []string
			for _, run := range side.runs {
				if f := formatRequests(run.requests); !slices.Contains(seen, f) {
					seen = append(seen, f)
				}
			}
			fmt.Fprintf(tw, "%d files, %s\t%s\n", r.files, side.name, strings.Join(seen, "; "))
		}
	}
	tw.Flush()
}

func floorListingName(st orphanStore) string {
	if _, ok := st.(s3Orphans); ok {
		return "one recursive ListObjectsV2 listing, in order already"
	}
	return "find -type f | LC_ALL=C sort"
}

func medianRun(runs []orphanRun) time.Duration {
	r := result{}
	for _, run := range runs {
		r.times = append(r.times, run.elapsed)
	}
	return r.median()
}

func runSeconds(runs []orphanRun) string {
	var each []string
	for _, run := range runs {
		each = append(each, fmt.Sprintf("%.2f", run.elapsed.Seconds()))
	}
	return strings.Join(each, " ")
}

// peakRuns is the highest memory of any run. The kernel's maxrss of a
// run is not among them: Go starts a process sharing the parent's memory
// until exec, and exec folds the peak of that memory, the benchmark's own
// (600 MB with a million files listed), into the child's maxrss.
func peakRuns(runs []orphanRun) memPeaks {
	var p memPeaks
	for _, run := range runs {
		p.rssAnon = max(p.rssAnon, run.mem.rssAnon)
		p.rssFile = max(p.rssFile, run.mem.rssFile)
		p.vmHWM = max(p.vmHWM, run.mem.vmHWM)
	}
	return p
}
