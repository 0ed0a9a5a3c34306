#!/usr/bin/env bash
# The demo (make demo): reconcile purging a Django forum's soft-deleted
# attachments, on a throwaway PostgreSQL 15 and a local media root.
#
#   1. builds bin/reconcile, starts PostgreSQL (scripts/pg.sh), creates the
#      forum database with Django's forum_attachment table and seeds 3010
#      attachments (scripts/demo/seed.sql), writing a 1-4 KB file for each key
#   2. reconcile migrate
#   3. reconcile --rescan --dry-run: the audit (text, then CSV)
#   4. reconcile --rescan: the purge
#   5. what was purged and what stayed, from SQL and the media root
#   6. reconcile as a service: it tails the table through logical
#      replication, purges a row the moment it falls due and leaves a row
#      restored in time alone; reconcile status and the service's /metrics
#   7. reconcile orphans: files no row owns, a dry run then the removal;
#      then SIGTERM to the service
#
# Needs nothing running; stops and removes everything it started on exit.
# Options (environment): RECONCILE_BIN=path (use this binary, skip the build),
# DEMO_KEEP=1 (keep the temp dir: media root, index, audit.csv, logs).
# Exits non-zero when a step fails or the outcome is not the expected one.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
if [[ -d /usr/local/go/bin ]]; then
    PATH=/usr/local/go/bin:$PATH
fi

# shellcheck source=scripts/pg.sh
source scripts/pg.sh

DEMO_DIR=
SERVICE_PID=
cleanup() {
    local status=$?
    trap - EXIT INT TERM
    if [[ -n $SERVICE_PID ]]; then
        kill -TERM "$SERVICE_PID" 2>/dev/null && wait "$SERVICE_PID" 2>/dev/null
    fi
    pg_stop 2>/dev/null
    if [[ -n $DEMO_DIR ]]; then
        if [[ ${DEMO_KEEP:-} == 1 ]]; then
            echo "demo: kept $DEMO_DIR" >&2
        else
            rm -rf -- "$DEMO_DIR"
        fi
    fi
    if [[ $status -ne 0 ]]; then
        echo "demo: FAILED (exit $status)" >&2
    fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

bold=
plain=
if [[ -t 1 ]]; then
    bold=$(printf '\033[1m')
    plain=$(printf '\033[0m')
fi
say() { printf '\n%s==> %s%s\n' "$bold" "$*" "$plain"; }
# show CMD...: print the command as typed, then run it.
show() {
    printf '%s$ %s%s\n' "$bold" "$*" "$plain"
    "$@"
}
# rc ARGS...: print and run reconcile ARGS.
rc() {
    printf '%s$ reconcile %s%s\n' "$bold" "$*" "$plain"
    "$RECONCILE" "$@"
}
die() {
    echo "demo: $*" >&2
    exit 1
}

# --- 1. build, start, seed ---------------------------------------------------
if [[ -n ${RECONCILE_BIN:-} ]]; then
    RECONCILE=$RECONCILE_BIN
    say "Using $RECONCILE"
else
    say "Building bin/reconcile"
    show go build -o bin/reconcile ./cmd/reconcile
    RECONCILE=$ROOT/bin/reconcile
fi
[[ -x $RECONCILE ]] || die "$RECONCILE is not an executable"

DEMO_DIR=$(mktemp -d /tmp/reconcile-demo.XXXXXX)
MEDIA=$DEMO_DIR/media
mkdir -p "$MEDIA"

say "Starting a throwaway PostgreSQL 15"
pg_start
pg_psql -c 'CREATE DATABASE forum'
FORUM_URL="postgres://postgres@127.0.0.1:$PG_PORT/forum?sslmode=disable"
sql() { "$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 "$FORUM_URL" "$@"; }
# sql1 QUERY: the single value QUERY returns.
sql1() { sql -At -c "$1"; }

say "Seeding the forum's attachments (Django's table, 3010 rows)"
sql -f internal/testdb/django_attachment.sql -f scripts/demo/seed.sql
sql -c "
SELECT CASE
         WHEN is_active THEN 'active'
         WHEN deleted_at IS NULL THEN 'soft-deleted, no deleted_at (inconsistent)'
         WHEN deleted_at <= now() - interval '30 days' THEN 'soft-deleted, due (30 days)'
         ELSE 'soft-deleted, not yet due'
       END AS state,
       count(*) AS rows
FROM forum_attachment GROUP BY 1 ORDER BY 1"

say "Writing a 1-4 KB file for every key under $MEDIA"
start=$SECONDS
# One query for the directories, one for keys and sizes; bash builtins for the files.
sql -At -c "SELECT DISTINCT regexp_replace(image, '/[^/]*$', '') FROM forum_attachment" |
    (cd "$MEDIA" && xargs mkdir -p)
blob=$(printf 'reconcile demo attachment %.0s' {1..160})
blob=${blob:0:4096}
while IFS='|' read -r key size; do
    printf '%s' "${blob:0:size}" >"$MEDIA/$key"
done < <(sql -At -c "SELECT DISTINCT image, 1024 + abs(hashtext(image)) % 3073 FROM forum_attachment")
# Uploaded before they were soft-deleted, as on a forum's disk: reconcile
# keeps a file modified about the time its removal is queued (a new upload
# under the same name).
find "$MEDIA" -type f -exec touch -d '90 days ago' {} +
files_before=$(find "$MEDIA" -type f | wc -l)
echo "$files_before files, $(du -sh "$MEDIA" | cut -f1), in $((SECONDS - start))s"

SHARED_KEY=forum/attachments/2025/06/01/shared-fern_abc1234.jpg
[[ -f $MEDIA/$SHARED_KEY ]] || die "seed: $SHARED_KEY was not written"

export RECONCILE_DATABASE_URL=$FORUM_URL
export RECONCILE_STORAGE_BACKEND=local
export RECONCILE_STORAGE_LOCAL_ROOT=$MEDIA
export RECONCILE_INDEX_PATH=$DEMO_DIR/index.db
echo
echo "RECONCILE_DATABASE_URL=$RECONCILE_DATABASE_URL"
echo "RECONCILE_STORAGE_BACKEND=$RECONCILE_STORAGE_BACKEND"
echo "RECONCILE_STORAGE_LOCAL_ROOT=$RECONCILE_STORAGE_LOCAL_ROOT"
echo "RECONCILE_INDEX_PATH=$RECONCILE_INDEX_PATH"

due_before=$(sql1 "SELECT count(*) FROM forum_attachment WHERE NOT is_active AND deleted_at <= now() - interval '30 days'")
rows_before=$(sql1 "SELECT count(*) FROM forum_attachment")

# --- 2. migrate ----------------------------------------------------------------
say "reconcile migrate: the outbox table and the index on the key column"
rc migrate
sql -c '\d forum_attachment'

# --- 3. the audit ----------------------------------------------------------------
say "The audit: what a purge would remove (--dry-run deletes nothing)"
printf '%s$ %s%s\n' "$bold" "reconcile --rescan --dry-run > dry-run.txt" "$plain"
"$RECONCILE" --rescan --dry-run >"$DEMO_DIR/dry-run.txt" 2>"$DEMO_DIR/dry-run.log" || {
    tail -n 20 "$DEMO_DIR/dry-run.log" >&2
    die "reconcile --rescan --dry-run failed"
}
lines=$(wc -l <"$DEMO_DIR/dry-run.txt")
head -n 15 "$DEMO_DIR/dry-run.txt"
if ((lines > 30)); then
    echo "  ... ($((lines - 30)) more lines) ..."
    tail -n 15 "$DEMO_DIR/dry-run.txt"
elif ((lines > 15)); then
    tail -n $((lines - 15)) "$DEMO_DIR/dry-run.txt"
fi

echo
rc --rescan --dry-run --format csv --output "$DEMO_DIR/audit.csv" 2>"$DEMO_DIR/dry-run-csv.log" || {
    tail -n 20 "$DEMO_DIR/dry-run-csv.log" >&2
    die "reconcile --rescan --dry-run --format csv failed"
}
head -n 3 "$DEMO_DIR/audit.csv"
show wc -l "$DEMO_DIR/audit.csv"
echo "rows by status (first column):"
tail -n +2 "$DEMO_DIR/audit.csv" | cut -d, -f1 | sort | uniq -c
[[ $(sql1 "SELECT count(*) FROM forum_attachment") -eq $rows_before ]] ||
    die "the dry-run deleted rows"
[[ $(find "$MEDIA" -type f | wc -l) -eq $files_before ]] ||
    die "the dry-run removed files"
echo "(dry-run: still $rows_before rows and $files_before files)"

# --- 4. the purge ------------------------------------------------------------------
say "The purge: reconcile --rescan (logs to purge.log)"
status=0
rc --rescan 2>"$DEMO_DIR/purge.log" || status=$?
echo
echo "exit status: $status"
echo "log lines with CLEANUP: $(grep -c CLEANUP "$DEMO_DIR/purge.log" || true)"
grep CLEANUP "$DEMO_DIR/purge.log" | head -n 3 || true
if [[ $status -ne 0 ]]; then
    echo "--- purge.log (last 20 lines)" >&2
    tail -n 20 "$DEMO_DIR/purge.log" >&2
    die "reconcile --rescan exited $status (1 = some purges failed; none should here)"
fi

# --- 5. what stayed --------------------------------------------------------------------
say "What was purged, what stayed"
sql -c "
SELECT 'active (incl. restored and the shared key''s live row)' AS what, count(*) AS rows
  FROM forum_attachment WHERE is_active
UNION ALL
SELECT 'soft-deleted, not yet due', count(*)
  FROM forum_attachment WHERE NOT is_active AND deleted_at > now() - interval '30 days'
UNION ALL
SELECT 'soft-deleted, due (should be 0)', count(*)
  FROM forum_attachment WHERE NOT is_active AND deleted_at <= now() - interval '30 days'
UNION ALL
SELECT 'inconsistent (is_active false, deleted_at NULL)', count(*)
  FROM forum_attachment WHERE NOT is_active AND deleted_at IS NULL
UNION ALL
SELECT 'total', count(*) FROM forum_attachment"

outbox=$(sql1 "SELECT CASE WHEN to_regclass('reconcile_forum_attachment_outbox') IS NULL THEN 'no table' ELSE (SELECT count(*)::text FROM reconcile_forum_attachment_outbox) END")
echo "outbox entries left: $outbox"

rows_after=$(sql1 "SELECT count(*) FROM forum_attachment")
due_after=$(sql1 "SELECT count(*) FROM forum_attachment WHERE NOT is_active AND deleted_at <= now() - interval '30 days'")
files_after=$(find "$MEDIA" -type f | wc -l)
echo "rows:  $rows_before -> $rows_after (purged $((rows_before - rows_after)), $due_before were due)"
echo "files: $files_before -> $files_after (removed $((files_before - files_after)))"
if [[ -f $MEDIA/$SHARED_KEY ]]; then
    echo "shared key kept: $SHARED_KEY (its other row is active)"
    sql -c "SELECT original_filename, is_active, deleted_at FROM forum_attachment WHERE image = '$SHARED_KEY'"
else
    die "the shared key's file $SHARED_KEY was removed although an active row uses it"
fi

# Every due row gone, every other row kept; every file of a purged row gone
# but the shared one.
[[ $due_after -eq 0 ]] || die "$due_after due rows are left"
[[ $((rows_before - rows_after)) -eq $due_before ]] ||
    die "purged $((rows_before - rows_after)) rows, expected $due_before"
[[ $((files_before - files_after)) -eq $((due_before - 1)) ]] ||
    die "removed $((files_before - files_after)) files, expected $((due_before - 1))"
missing=0
while IFS= read -r key; do
    [[ -f $MEDIA/$key ]] || missing=$((missing + 1))
done < <(sql -At -c "SELECT DISTINCT image FROM forum_attachment")
[[ $missing -eq 0 ]] || die "$missing rows left point at a missing file"
echo "rescan: $due_before due rows purged, $((due_before - 1)) files removed, every remaining row has its file"

# --- 6. the service ---------------------------------------------------------------------
say "The service: reconcile (no --rescan) purges each row when it falls due (logs to service.log)"
# Its /metrics, /healthz, /readyz and /status, on a free port rather than
# the default 127.0.0.1:9478, which a real service may hold.
HTTP_PORT=$(free_port)
export RECONCILE_HTTP_LISTEN=127.0.0.1:$HTTP_PORT
echo "RECONCILE_HTTP_LISTEN=$RECONCILE_HTTP_LISTEN"
printf '%s$ reconcile &%s\n' "$bold" "$plain"
"$RECONCILE" 2>"$DEMO_DIR/service.log" &
SERVICE_PID=$!
for ((i = 0; i < 150; i++)); do
    grep -q "streaming changes" "$DEMO_DIR/service.log" && break
    kill -0 "$SERVICE_PID" 2>/dev/null || break
    sleep 0.2
done
grep -q "streaming changes" "$DEMO_DIR/service.log" || {
    tail -n 20 "$DEMO_DIR/service.log" >&2
    die "the service did not start streaming"
}
grep -E "created|rescan|streaming" "$DEMO_DIR/service.log" | sed 's/^/  /'

# Two active rows soft-deleted so that they fall due in 5 seconds; one of
# them is restored 2 seconds later.
read -r purge_id purge_key < <(sql1 "SELECT id, image FROM forum_attachment WHERE is_active AND image <> '$SHARED_KEY' ORDER BY id LIMIT 1" | tr '|' ' ')
read -r keep_id keep_key < <(sql1 "SELECT id, image FROM forum_attachment WHERE is_active AND image <> '$SHARED_KEY' ORDER BY id OFFSET 1 LIMIT 1" | tr '|' ' ')
show sql -c "UPDATE forum_attachment SET is_active = false, deleted_at = now() - interval '30 days' + interval '5 seconds'
             WHERE id IN ('$purge_id', '$keep_id')"
sleep 2
show sql -c "UPDATE forum_attachment SET is_active = true, deleted_at = NULL WHERE id = '$keep_id'"
start=$SECONDS
while [[ $(sql1 "SELECT count(*) FROM forum_attachment WHERE id = '$purge_id'") -ne 0 ]]; do
    ((SECONDS - start < 30)) || die "the service did not purge $purge_id"
    sleep 0.2
done
echo "purged $purge_id about $((SECONDS - start + 2))s after it was soft-deleted (due after 5s):"
grep "Hard-deleted" "$DEMO_DIR/service.log" | sed 's/^/  /'
# The file goes once the row's deletion has committed.
for ((i = 0; i < 25 && ${#purge_key} > 0; i++)); do
    [[ -e $MEDIA/$purge_key ]] || break
    sleep 0.2
done
[[ ! -e $MEDIA/$purge_key ]] || die "the purged row's file $purge_key is still there"
[[ $(sql1 "SELECT count(*) FROM forum_attachment WHERE id = '$keep_id' AND is_active") -eq 1 && -f $MEDIA/$keep_key ]] ||
    die "the restored row $keep_id or its file is gone"
echo "restored in time, kept: $keep_id ($keep_key)"

say "What an operator watches: reconcile status, and the service's /metrics"
rc status
printf '%s$ curl -s http://%s/metrics | grep ...%s\n' "$bold" "$RECONCILE_HTTP_LISTEN" "$plain"
exec 3<>"/dev/tcp/127.0.0.1/$HTTP_PORT" || die "the service does not serve /metrics"
printf 'GET /metrics HTTP/1.0\r\nHost: %s\r\n\r\n' "$RECONCILE_HTTP_LISTEN" >&3
metrics=$(cat <&3)
exec 3<&-
grep -E '^reconcile_(replication_connected|leader|index_rows|due_rows|purged_rows_total|files_removed_total|outbox_pending|slot_retained_wal_bytes) ' <<<"$metrics" |
    sed 's/^/  /'
grep -q '^reconcile_purged_rows_total 1$' <<<"$metrics" || die "/metrics does not count the purged row"

# --- 7. the orphan scan, while the service runs (it has seen every DELETE) ------------
say "Files no row owns: reconcile orphans (a failed upload, a row deleted before reconcile ran)"
for orphan in forum/attachments/2025/06/01/failed-upload_0000001.jpg forum/attachments/2024/12/24/deleted-outright.png; do
    mkdir -p "$MEDIA/$(dirname "$orphan")"
    printf '%s' "${blob:0:2048}" >"$MEDIA/$orphan"
    touch -d '2 days ago' "$MEDIA/$orphan"
done
# A file's age counts from its last status change too (a copy that kept an
# old modification time is as young as the copy): a short grace for the
# demo, and a wait past it.
export RECONCILE_ORPHANS_GRACE=2s
echo "RECONCILE_ORPHANS_GRACE=$RECONCILE_ORPHANS_GRACE"
sleep 3
printf '%s' "${blob:0:100}" >"$MEDIA/forum/attachments/2025/06/01/uploading-now.jpg" # younger than orphans.grace
files_before=$(find "$MEDIA" -type f | wc -l)
rc orphans --dry-run 2>"$DEMO_DIR/orphans-dry-run.log" || die "reconcile orphans --dry-run failed"
rc orphans --format csv --output "$DEMO_DIR/orphans.csv" 2>"$DEMO_DIR/orphans.log" || {
    tail -n 20 "$DEMO_DIR/orphans.log" >&2
    die "reconcile orphans failed"
}
sed 's/^/  /' "$DEMO_DIR/orphans.csv"
files_after=$(find "$MEDIA" -type f | wc -l)
[[ $((files_before - files_after)) -eq 2 ]] || die "the orphan scan removed $((files_before - files_after)) files, expected 2"
[[ -f $MEDIA/forum/attachments/2025/06/01/uploading-now.jpg ]] || die "the orphan scan removed a fresh upload"
missing=0
while IFS= read -r key; do
    [[ -f $MEDIA/$key ]] || missing=$((missing + 1))
done < <(sql -At -c "SELECT DISTINCT image FROM forum_attachment")
[[ $missing -eq 0 ]] || die "the orphan scan removed $missing files that rows use"
echo "orphans: 2 files removed, the fresh upload and every row's file kept"

show kill -TERM "$SERVICE_PID"
wait "$SERVICE_PID" || die "the service exited with status $?"
SERVICE_PID=
grep -E "stopped" "$DEMO_DIR/service.log" | sed 's/^/  /'

echo
echo "demo: OK"
