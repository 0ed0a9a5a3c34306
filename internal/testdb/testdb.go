// Package testdb gives tests a fresh PostgreSQL database of their own, on the
// server named by TEST_DATABASE_URL (started by scripts/test.sh), with the
// Django attachment table that reconcile works on.
package testdb

import (
	"context"
	"crypto/rand"
	_ "embed"
	"encoding/hex"
	"net/url"
	"os"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// DjangoSchema creates forum_attachment as Django does, with the partial
// index of the forum's migration 0004.
//
//go:embed django_attachment.sql
var DjangoSchema string

// PartitionedSchema creates forum_attachment partitioned by its id, one
// partition partitioned again, without Django's partial index.
//
//go:embed django_attachment_partitioned.sql
var PartitionedSchema string

// AdminURL returns TEST_DATABASE_URL and fails the test when it is unset:
// these tests prove safety against a real server and must not be skipped.
func AdminURL(t testing.TB) string {
	t.Helper()
	url := os.Getenv("TEST_DATABASE_URL")
	if url == "" {
		t.Fatal("TEST_DATABASE_URL is not set: run the tests with `make test`, which starts PostgreSQL")
	}
	return url
}

// New creates an empty database, dropped when the test ends, and returns its
// URL and a pool on it.
func New(t testing.TB) (string, *pgxpool.Pool) {
	t.Helper()
	return newOn(t, AdminURL(t))
}

func newOn(t testing.TB, adminURL string) (string, *pgxpool.Pool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	admin, err := pgx.Connect(ctx, adminURL)
	if err != nil {
		t.Fatalf("connect to TEST_DATABASE_URL: %v", err)
	}
	defer admin.Close(ctx)

	var b [6]byte
	_, _ = rand.Read(b[:])
	name := "t_" + hex.EncodeToString(b[:])
	if _, err := admin.Exec(ctx, "CREATE DATABASE "+name); err != nil {
		t.Fatalf("create test database: %v", err)
	}

	u, err := url.Parse(adminURL)
	if err != nil {
		t.Fatalf("parse TEST_DATABASE_URL: %v", err)
	}
	u.Path = "/" + name
	dbURL := u.String()

	pool, err := pgxpool.New(ctx, dbURL)
	if err != nil {
		t.Fatalf("open pool on %s: %v", name, err)
	}
	t.Cleanup(func() {
		pool.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		conn, err := pgx.Connect(ctx, adminURL)
		if err != nil {
			t.Errorf("connect to drop %s: %v", name, err)
			return
		}
		defer conn.Close(ctx)
		// Replication slots hold on to their database; a test's service may
		// still be letting go of its slot.
		for ctx.Err() == nil {
			_, _ = conn.Exec(ctx, `SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE database = $1 AND active`, name)
			_, _ = conn.Exec(ctx, `SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE database = $1 AND NOT active`, name)
			var left int
			if err := conn.QueryRow(ctx, `SELECT count(*) FROM pg_replication_slots WHERE database = $1`, name).Scan(&left); err != nil || left == 0 {
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
		if _, err := conn.Exec(ctx, "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)"); err != nil {
			t.Errorf("drop test database %s: %v", name, err)
		}
	})
	return dbURL, pool
}

// NewDjango is New plus the Django attachment table.
func NewDjango(t testing.TB) (string, *pgxpool.Pool) {
	t.Helper()
	return django(t, AdminURL(t))
}

func django(t testing.TB, adminURL string) (string, *pgxpool.Pool) {
	t.Helper()
	url, pool := newOn(t, adminURL)
	if _, err := pool.Exec(context.Background(), DjangoSchema); err != nil {
		t.Fatalf("create Django schema: %v", err)
	}
	return url, pool
}
