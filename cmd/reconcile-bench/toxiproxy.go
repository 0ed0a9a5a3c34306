package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// toxiproxy speaks to the HTTP API of a toxiproxy server (v2).
type toxiproxy struct {
	api    string // http://host:port, no trailing slash
	client *http.Client
}

func newToxiproxy(api string) *toxiproxy {
	return &toxiproxy{api: strings.TrimRight(api, "/"), client: &http.Client{Timeout: 30 * time.Second}}
}

// createProxy makes a proxy named name that listens on a free port of
// 127.0.0.1 and forwards to upstream (host:port); it returns the address it
// listens on.
func (t *toxiproxy) createProxy(ctx context.Context, name, upstream string) (string, error) {
	in := map[string]any{"name": name, "listen": "127.0.0.1:0", "upstream": upstream, "enabled": true}
	var out struct {
		Listen string `json:"listen"`
	}
	if err := t.call(ctx, http.MethodPost, "/proxies", in, &out); err != nil {
		return "", fmt.Errorf("creating proxy %s: %w", name, err)
	}
	if out.Listen == "" || strings.HasSuffix(out.Listen, ":0") {
		return "", fmt.Errorf("creating proxy %s: toxiproxy reported no listening address (got %q)", name, out.Listen)
	}
	return out.Listen, nil
}

// addLatency delays every chunk of data on stream ("upstream": client to
// server, "downstream": server to client) of proxy by latency, which
// toxiproxy takes in whole milliseconds.
func (t *toxiproxy) addLatency(ctx context.Context, proxy, stream string, latency time.Duration) error {
	in := map[string]any{
		"name":       "latency_" + stream,
		"type":       "latency",
		"stream":     stream,
		"toxicity":   1.0,
		"attributes": map[string]any{"latency": latency.Milliseconds(), "jitter": 0},
	}
	if err := t.call(ctx, http.MethodPost, "/proxies/"+url.PathEscape(proxy)+"/toxics", in, nil); err != nil {
		return fmt.Errorf("adding %s latency to proxy %s: %w", stream, proxy, err)
	}
	return nil
}

// deleteProxy removes the proxy, closing its connections.
func (t *toxiproxy) deleteProxy(ctx context.Context, name string) error {
	if err := t.call(ctx, http.MethodDelete, "/proxies/"+url.PathEscape(name), nil, nil); err != nil {
		return fmt.Errorf("deleting proxy %s: %w", name, err)
	}
	return nil
}

// call sends in as JSON (when non-nil) and decodes the answer into out
// (when non-nil); a status of 300 or more is an error carrying the answer.
func (t *toxiproxy) call(ctx context.Context, method, path string, in, out any) error {
	var body io.Reader
	if in != nil {
		data, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytes.NewReader(data)
	}
	req, err := http.NewRequestWithContext(ctx, method, t.api+path, body)
	if err != nil {
		return err
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := t.client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return fmt.Errorf("reading the answer to %s %s: %w", method, path, err)
	}
	if resp.StatusCode >= 300 {
		return fmt.Errorf("%s %s: %s: %s", method, path, resp.Status, strings.TrimSpace(string(data)))
	}
	if out != nil {
		if err := json.Unmarshal(data, out); err != nil {
			return fmt.Errorf("decoding the answer to %s %s: %w", method, path, err)
		}
	}
	return nil
}
