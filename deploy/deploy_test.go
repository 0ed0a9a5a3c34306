// Package deploy holds the deployment files: systemd units, Kubernetes
// manifests, Prometheus alerts and a Grafana dashboard. Its tests parse them
// and check them against the metrics reconcile exports and the configuration
// it reads; make check-deploy runs the tools themselves (promtool,
// systemd-analyze).
package deploy

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"io/fs"
	"net/http/httptest"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/reconcile/reconcile/internal/config"
	"github.com/reconcile/reconcile/internal/metrics"
)

// metricNames are the metrics reconcile serves and writes to its
// textfile, read from internal/metrics itself; histograms are those whose
// series carry _bucket, _count and _sum.
var metricNames, histograms = exported()

func exported() (names, histograms []string) {
	m := metrics.New("test")
	rec := httptest.NewRecorder()
	m.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	text := rec.Body.String()
	dir, err := os.MkdirTemp("", "reconcile-deploy-test")
	if err != nil {
		panic(err)
	}
	defer os.RemoveAll(dir)
	file := filepath.Join(dir, "reconcile.prom")
	if err := m.WriteTextfile(file, true, time.Now()); err != nil {
		panic(err)
	}
	raw, err := os.ReadFile(file)
	if err != nil {
		panic(err)
	}
	for _, line := range strings.Split(text+string(raw), "\n") {
		f := strings.Fields(line)
		if len(f) == 4 && f[0] == "#" && f[1] == "TYPE" {
			if !slices.Contains(names, f[2]) {
				names = append(names, f[2])
			}
			if f[3] == "histogram" {
				histograms = append(histograms, f[2])
			}
		}
	}
	return names, histograms
}

// metricRef matches what may be a metric name in PromQL or prose.
var metricRef = regexp.MustCompile(`\b(?:reconcile|go|process)_[a-z0-9_]+\b`)

// notMetrics are names in the annotations' prose that are not metrics.
var notMetrics = []string{"reconcile_attachments"} // the default slot

// unknownMetrics returns the names in text that reconcile does not export.
func unknownMetrics(text string) []string {
	var unknown []string
	for _, name := range metricRef.FindAllString(text, -1) {
		if !slices.Contains(metricNames, metricName(name)) && !slices.Contains(notMetrics, name) {
			unknown = append(unknown, name)
		}
	}
	return unknown
}

// metricName strips a histogram's series suffix.
func metricName(series string) string {
	for _, h := range histograms {
		for _, suffix := range []string{"_bucket", "_count", "_sum"} {
			if series == h+suffix {
				return h
			}
		}
	}
	return series
}

// TestFilesParse decodes every YAML document and JSON file under deploy/.
func TestFilesParse(t *testing.T) {
	var seen int
	err := filepath.WalkDir(".", func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		raw, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		switch filepath.Ext(p) {
		case ".yaml", ".yml":
			seen++
			if _, err := yamlDocs(raw); err != nil {
				t.Errorf("%s: %v", p, err)
			}
		case ".json":
			seen++
			var v any
			if err := json.Unmarshal(raw, &v); err != nil {
				t.Errorf("%s: %v", p, err)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if seen < 8 {
		t.Fatalf("parsed %d YAML and JSON files; want the 8 or more under deploy/", seen)
	}
}

// yamlDocs decodes every document of a YAML stream.
func yamlDocs(raw []byte) ([]any, error) {
	dec := yaml.NewDecoder(bytes.NewReader(raw))
	var docs []any
	for {
		var doc any
		err := dec.Decode(&doc)
		if errors.Is(err, io.EOF) {
			return docs, nil
		}
		if err != nil {
			return nil, err
		}
		docs = append(docs, doc)
	}
}

func decodeYAML(t *testing.T, file string, v any) {
	t.Helper()
	raw, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(raw, v); err != nil {
		t.Fatalf("%s: %v", file, err)
	}
}

type ruleFile struct {
	Groups []struct {
		Name  string `yaml:"name"`
		Rules []struct {
			Alert       string            `yaml:"alert"`
			Expr        string            `yaml:"expr"`
			For         string            `yaml:"for"`
			Labels      map[string]string `yaml:"labels"`
			Annotations map[string]string `yaml:"annotations"`
		} `yaml:"rules"`
	} `yaml:"groups"`
}

type ruleTestFile struct {
	RuleFiles []string `yaml:"rule_files"`
	Tests     []struct {
		Name        string `yaml:"name"`
		InputSeries []struct {
			Series string `yaml:"series"`
		} `yaml:"input_series"`
		AlertRuleTest []struct {
			Alertname string `yaml:"alertname"`
			ExpAlerts []any  `yaml:"exp_alerts"`
		} `yaml:"alert_rule_test"`
	} `yaml:"tests"`
}

const rulesFile = "prometheus/reconcile-rules.yaml"

var ruleTestFiles = []string{"prometheus/reconcile-rules_test.yaml", "prometheus/reconcile-rescan-rules_test.yaml"}

// TestAlerts checks that every alert has a duration, a severity and
// annotations, names only metrics that reconcile exports, and that the
// promtool tests see it both fire and stay silent.
func TestAlerts(t *testing.T) {
	var rules ruleFile
	decodeYAML(t, rulesFile, &rules)
	var alerts []string
	for _, g := range rules.Groups {
		for _, r := range g.Rules {
			if r.Alert == "" {
				t.Errorf("group %s: a rule without alert: %q", g.Name, r.Expr)
				continue
			}
			alerts = append(alerts, r.Alert)
			if r.For == "" {
				t.Errorf("%s: no for:", r.Alert)
			}
			if s := r.Labels["severity"]; s != "warning" && s != "critical" {
				t.Errorf("%s: severity %q; want warning or critical", r.Alert, s)
			}
			if r.Annotations["summary"] == "" || r.Annotations["description"] == "" {
				t.Errorf("%s: want a summary and a description", r.Alert)
			}
			for _, text := range []string{r.Expr, r.Annotations["summary"], r.Annotations["description"]} {
				if unknown := unknownMetrics(text); len(unknown) > 0 {
					t.Errorf("%s: unknown metrics %v", r.Alert, unknown)
				}
			}
		}
	}
	if len(alerts) < 11 {
		t.Fatalf("%d alerts; want the 11 or more of %s", len(alerts), rulesFile)
	}

	fires, silent := map[string]bool{}, map[string]bool{}
	for _, file := range ruleTestFiles {
		var tests ruleTestFile
		decodeYAML(t, file, &tests)
		if !slices.Equal(tests.RuleFiles, []string{path.Base(rulesFile)}) {
			t.Errorf("%s: rule_files %v; want [%s]", file, tests.RuleFiles, path.Base(rulesFile))
		}
		for _, tc := range tests.Tests {
			for _, s := range tc.InputSeries {
				if unknown := unknownMetrics(s.Series); len(unknown) > 0 {
					t.Errorf("%s, %q: unknown metrics %v", file, tc.Name, unknown)
				}
			}
			for _, at := range tc.AlertRuleTest {
				if !slices.Contains(alerts, at.Alertname) {
					t.Errorf("%s, %q: no alert %s", file, tc.Name, at.Alertname)
				}
				if len(at.ExpAlerts) > 0 {
					fires[at.Alertname] = true
				} else {
					silent[at.Alertname] = true
				}
			}
		}
	}
	for _, a := range alerts {
		if !fires[a] || !silent[a] {
			t.Errorf("%s: tested firing %v, silent %v; want both", a, fires[a], silent[a])
		}
	}
}

// TestDashboard checks that the dashboard queries only metrics that
// reconcile exports, and shows every one of reconcile's.
func TestDashboard(t *testing.T) {
	raw, err := os.ReadFile("grafana/reconcile-dashboard.json")
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		Templating struct {
			List []struct {
				Name string `json:"name"`
			} `json:"list"`
		} `json:"templating"`
		Panels []struct {
			Title   string `json:"title"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
	}
	if err := json.Unmarshal(raw, &dash); err != nil {
		t.Fatal(err)
	}
	var vars []string
	for _, v := range dash.Templating.List {
		vars = append(vars, v.Name)
	}
	for _, want := range []string{"datasource", "job", "instance"} {
		if !slices.Contains(vars, want) {
			t.Errorf("no variable %s in %v", want, vars)
		}
	}
	shown := map[string]bool{}
	for _, p := range dash.Panels {
		for _, target := range p.Targets {
			if unknown := unknownMetrics(target.Expr); len(unknown) > 0 {
				t.Errorf("panel %q: unknown metrics %v", p.Title, unknown)
			}
			for _, name := range metricRef.FindAllString(target.Expr, -1) {
				shown[metricName(name)] = true
			}
		}
	}
	for _, name := range metricNames {
		if strings.HasPrefix(name, "reconcile_") && !shown[name] {
			t.Errorf("%s is on no panel", name)
		}
	}
}

type envVar struct {
	Name      string `yaml:"name"`
	Value     string `yaml:"value"`
	ValueFrom struct {
		SecretKeyRef struct {
			Name string `yaml:"name"`
			Key  string `yaml:"key"`
		} `yaml:"secretKeyRef"`
	} `yaml:"valueFrom"`
}

type probe struct {
	HTTPGet struct {
		Path string `yaml:"path"`
		Port any    `yaml:"port"`
	} `yaml:"httpGet"`
}

type deployment struct {
	Kind string `yaml:"kind"`
	Spec struct {
		Template struct {
			Metadata struct {
				Annotations map[string]string `yaml:"annotations"`
			} `yaml:"metadata"`
			Spec struct {
				SecurityContext struct {
					RunAsNonRoot *bool `yaml:"runAsNonRoot"`
					RunAsUser    int   `yaml:"runAsUser"`
				} `yaml:"securityContext"`
				Containers []struct {
					Env   []envVar `yaml:"env"`
					Ports []struct {
						Name          string `yaml:"name"`
						ContainerPort int    `yaml:"containerPort"`
					} `yaml:"ports"`
					LivenessProbe   *probe `yaml:"livenessProbe"`
					ReadinessProbe  *probe `yaml:"readinessProbe"`
					SecurityContext struct {
						RunAsNonRoot             *bool `yaml:"runAsNonRoot"`
						ReadOnlyRootFilesystem   *bool `yaml:"readOnlyRootFilesystem"`
						AllowPrivilegeEscalation *bool `yaml:"allowPrivilegeEscalation"`
						Capabilities             struct {
							Drop []string `yaml:"drop"`
						} `yaml:"capabilities"`
					} `yaml:"securityContext"`
					VolumeMounts []struct {
						Name      string `yaml:"name"`
						MountPath string `yaml:"mountPath"`
					} `yaml:"volumeMounts"`
				} `yaml:"containers"`
				Volumes []struct {
					Name      string `yaml:"name"`
					EmptyDir  any    `yaml:"emptyDir"`
					ConfigMap struct {
						Name string `yaml:"name"`
					} `yaml:"configMap"`
				} `yaml:"volumes"`
			} `yaml:"spec"`
		} `yaml:"template"`
	} `yaml:"spec"`
}

type dataObject struct {
	Kind     string `yaml:"kind"`
	Metadata struct {
		Name string `yaml:"name"`
	} `yaml:"metadata"`
	Data       map[string]string `yaml:"data"`
	StringData map[string]string `yaml:"stringData"`
}

// TestKubernetes checks the Deployment's probes, scrape annotations and
// sandbox, that the index is on an emptyDir, and that the configuration it
// mounts, with the environment it sets, loads with what it meant.
func TestKubernetes(t *testing.T) {
	var kust struct {
		Resources []string `yaml:"resources"`
	}
	decodeYAML(t, "kubernetes/kustomization.yaml", &kust)
	for _, r := range kust.Resources {
		if _, err := os.Stat(filepath.Join("kubernetes", r)); err != nil {
			t.Errorf("kustomization: %v", err)
		}
	}

	var d deployment
	decodeYAML(t, "kubernetes/deployment.yaml", &d)
	if d.Kind != "Deployment" || len(d.Spec.Template.Spec.Containers) != 1 {
		t.Fatalf("kind %q with %d containers; want a Deployment with one", d.Kind, len(d.Spec.Template.Spec.Containers))
	}
	pod := d.Spec.Template.Spec
	c := pod.Containers[0]
	env := map[string]envVar{}
	for _, e := range c.Env {
		env[e.Name] = e
	}

	listen := env["RECONCILE_HTTP_LISTEN"].Value
	if !strings.HasPrefix(listen, "0.0.0.0:") {
		t.Errorf("RECONCILE_HTTP_LISTEN %q; want all interfaces, for the probes", listen)
	}
	port := strings.TrimPrefix(listen, "0.0.0.0:")
	if len(c.Ports) != 1 || c.Ports[0].ContainerPort != atoi(t, port) {
		t.Errorf("ports %+v; want one, %s", c.Ports, port)
	}
	ann := d.Spec.Template.Metadata.Annotations
	if ann["prometheus.io/scrape"] != "true" || ann["prometheus.io/port"] != port || ann["prometheus.io/path"] != "/metrics" {
		t.Errorf("scrape annotations %v; want scrape true on port %s, /metrics", ann, port)
	}
	for _, p := range []struct {
		name  string
		probe *probe
		path  string
	}{{"liveness", c.LivenessProbe, "/healthz"}, {"readiness", c.ReadinessProbe, "/readyz"}} {
		if p.probe == nil || p.probe.HTTPGet.Path != p.path || (p.probe.HTTPGet.Port != c.Ports[0].Name && p.probe.HTTPGet.Port != c.Ports[0].ContainerPort) {
			t.Errorf("%s probe %+v; want GET %s on the container's port", p.name, p.probe, p.path)
		}
	}

	sc := c.SecurityContext
	if !isTrue(pod.SecurityContext.RunAsNonRoot) && !isTrue(sc.RunAsNonRoot) {
		t.Error("runAsNonRoot is not set")
	}
	if !isTrue(sc.ReadOnlyRootFilesystem) {
		t.Error("readOnlyRootFilesystem is not true")
	}
	if sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
		t.Error("allowPrivilegeEscalation is not false")
	}
	if !slices.Equal(sc.Capabilities.Drop, []string{"ALL"}) {
		t.Errorf("capabilities drop %v; want [ALL]", sc.Capabilities.Drop)
	}
	if uid := dockerfileUID(t); pod.SecurityContext.RunAsUser != uid {
		t.Errorf("runAsUser %d; the Dockerfile's USER is %d", pod.SecurityContext.RunAsUser, uid)
	}

	volumeAt := func(file string) (name string) {
		for _, m := range c.VolumeMounts {
			if m.MountPath == path.Dir(file) {
				return m.Name
			}
		}
		t.Errorf("no volume mounted at %s, for %s", path.Dir(file), file)
		return ""
	}
	indexPath, configPath := env["RECONCILE_INDEX_PATH"].Value, env["RECONCILE_CONFIG"].Value
	indexVolume, configVolume := volumeAt(indexPath), volumeAt(configPath)
	var configMap string
	for _, v := range pod.Volumes {
		switch v.Name {
		case indexVolume:
			if v.EmptyDir == nil {
				t.Errorf("volume %s of the index: want an emptyDir (a cache)", v.Name)
			}
		case configVolume:
			configMap = v.ConfigMap.Name
		}
	}

	var cm, secret dataObject
	decodeYAML(t, "kubernetes/configmap.yaml", &cm)
	decodeYAML(t, "kubernetes/secret.example.yaml", &secret)
	if cm.Kind != "ConfigMap" || cm.Metadata.Name != configMap {
		t.Fatalf("configmap.yaml: %s %s; want the ConfigMap %q", cm.Kind, cm.Metadata.Name, configMap)
	}
	file, ok := cm.Data[path.Base(configPath)]
	if !ok {
		t.Fatalf("ConfigMap %s has no %s", configMap, path.Base(configPath))
	}
	configFile := filepath.Join(t.TempDir(), "reconcile.yaml")
	if err := os.WriteFile(configFile, []byte(file), 0o600); err != nil {
		t.Fatal(err)
	}
	for name, e := range env {
		if !strings.HasPrefix(name, "RECONCILE_") || name == "RECONCILE_CONFIG" {
			continue
		}
		value := e.Value
		if ref := e.ValueFrom.SecretKeyRef; ref.Name != "" {
			var ok bool
			value, ok = secret.StringData[ref.Key]
			if ref.Name != secret.Metadata.Name || !ok {
				t.Errorf("%s: secret %s key %s is not in secret.example.yaml", name, ref.Name, ref.Key)
			}
			env[name] = envVar{Value: value}
		}
		t.Setenv(name, value)
	}
	cfg, err := config.Load(configFile, nil)
	if err != nil {
		t.Fatalf("the ConfigMap's configuration with the Deployment's environment: %v", err)
	}
	for _, got := range []struct{ key, got, want string }{
		{"http.listen", cfg.HTTP.Listen, listen},
		{"index.path", cfg.Index.Path, indexPath},
		{"database.url", cfg.Database.URL, env["RECONCILE_DATABASE_URL"].Value},
		{"storage.s3.access_key", cfg.Storage.S3.AccessKey, env["RECONCILE_STORAGE_S3_ACCESS_KEY"].Value},
		{"storage.s3.secret_key", cfg.Storage.S3.SecretKey, env["RECONCILE_STORAGE_S3_SECRET_KEY"].Value},
	} {
		if got.want == "" || got.got != got.want {
			t.Errorf("%s = %q; want %q", got.key, got.got, got.want)
		}
	}
}

func isTrue(b *bool) bool { return b != nil && *b }

func atoi(t *testing.T, s string) int {
	t.Helper()
	var n int
	if err := json.Unmarshal([]byte(s), &n); err != nil {
		t.Fatalf("%q: %v", s, err)
	}
	return n
}

// dockerfileUID is the numeric user of the Dockerfile's last USER.
func dockerfileUID(t *testing.T) int {
	raw, err := os.ReadFile("Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	uid := -1
	for line := range strings.Lines(string(raw)) {
		if user, ok := strings.CutPrefix(line, "USER "); ok {
			uid = atoi(t, strings.Split(strings.TrimSpace(user), ":")[0])
		}
	}
	return uid
}

// unit is a systemd unit file: section, key, the values in order.
type unit map[string]map[string][]string

func readUnit(t *testing.T, file string) unit {
	t.Helper()
	f, err := os.Open(file)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	u := unit{}
	var section string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		switch {
		case line == "" || strings.HasPrefix(line, "#") || strings.HasPrefix(line, ";"):
		case strings.HasPrefix(line, "["):
			section = strings.Trim(line, "[]")
			u[section] = map[string][]string{}
		default:
			key, value, ok := strings.Cut(line, "=")
			if !ok || section == "" {
				t.Fatalf("%s: %q is not Key=value in a section", file, line)
			}
			u[section][key] = append(u[section][key], value)
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return u
}

func (u unit) get(section, key string) string {
	values := u[section][key]
	if len(values) == 0 {
		return ""
	}
	return values[len(values)-1]
}

// TestSystemd checks what systemd-analyze verify cannot: that the index is
// in the state directory, that the sandbox lets reconcile write where the
// configuration points, and that the environment names are the ones the
// configuration reads.
func TestSystemd(t *testing.T) {
	var example struct {
		Storage struct {
			Local struct {
				Root string `yaml:"root"`
			} `yaml:"local"`
		} `yaml:"storage"`
	}
	decodeYAML(t, "../configs/reconcile.example.yaml", &example)

	for _, name := range []string{"reconcile.service", "reconcile-rescan.service"} {
		t.Run(name, func(t *testing.T) {
			u := readUnit(t, filepath.Join("systemd", name))
			s := u["Service"]
			env := map[string]string{}
			for _, e := range s["Environment"] {
				k, v, _ := strings.Cut(e, "=")
				env[k] = v
			}
			writable := strings.Fields(strings.Join(s["ReadWritePaths"], " "))
			if u.get("Service", "ProtectSystem") != "strict" {
				t.Errorf("ProtectSystem=%s; want strict", u.get("Service", "ProtectSystem"))
			}
			if dir := path.Join("/var/lib", u.get("Service", "StateDirectory")); path.Dir(env["RECONCILE_INDEX_PATH"]) != dir {
				t.Errorf("RECONCILE_INDEX_PATH=%s; want a file in the StateDirectory %s", env["RECONCILE_INDEX_PATH"], dir)
			}
			if !slices.Contains(writable, example.Storage.Local.Root) {
				t.Errorf("ReadWritePaths %v lacks the example's storage.local.root %s", writable, example.Storage.Local.Root)
			}
			if env["RECONCILE_CONFIG"] == "" || u.get("Service", "EnvironmentFile") == "" {
				t.Error("want RECONCILE_CONFIG and an EnvironmentFile for the secrets")
			}

			args := strings.Fields(u.get("Service", "ExecStart"))
			rescan := slices.Contains(args, "--rescan")
			switch name {
			case "reconcile.service":
				if rescan || u.get("Service", "Restart") != "on-failure" {
					t.Errorf("ExecStart %v, Restart=%s; want the service, restarted on failure", args, u.get("Service", "Restart"))
				}
			case "reconcile-rescan.service":
				i := slices.Index(args, "--metrics-file")
				if !rescan || u.get("Service", "Type") != "oneshot" || i < 0 || i+1 == len(args) {
					t.Fatalf("ExecStart %v, Type=%s; want a oneshot --rescan with --metrics-file", args, u.get("Service", "Type"))
				}
				if dir := path.Dir(args[i+1]); !slices.Contains(writable, dir) {
					t.Errorf("ReadWritePaths %v lacks %s, the --metrics-file's folder", writable, dir)
				}
			}

			t.Setenv("RECONCILE_DB_PASSWORD", "secret")
			for k, v := range env {
				if k != "RECONCILE_CONFIG" {
					t.Setenv(k, v)
				}
			}
			t.Setenv("RECONCILE_STORAGE_LOCAL_ROOT", t.TempDir()) // the real one is the site's
			cfg, err := config.Load("../configs/reconcile.example.yaml", nil)
			if err != nil {
				t.Fatalf("the example configuration with the unit's environment: %v", err)
			}
			if cfg.Index.Path != env["RECONCILE_INDEX_PATH"] {
				t.Errorf("index.path %s; want the unit's %s", cfg.Index.Path, env["RECONCILE_INDEX_PATH"])
			}
		})
	}

	timer := readUnit(t, "systemd/reconcile-rescan.timer")
	if timer.get("Timer", "OnCalendar") == "" || timer.get("Timer", "Persistent") != "true" || timer.get("Timer", "RandomizedDelaySec") == "" {
		t.Errorf("timer %v; want OnCalendar, Persistent=true and RandomizedDelaySec", timer["Timer"])
	}
}
