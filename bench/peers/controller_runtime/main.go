// The controller-runtime (Kubebuilder) Memcached operator the bench runs beside this pipeline:
// one manager, one controller For(Memcached) that Owns its Deployment, Service and
// PodDisruptionBudget, the cache confined to one namespace, optional leader election on a
// Lease in that namespace. controller-runtime's /metrics (reconcile counts, workqueue, leader
// status) is served on --metrics-bind-address; /healthz and /readyz on
// --health-probe-bind-address.
package main

import (
	"flag"
	"os"
	"time"

	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/healthz"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	"k8s.io/apimachinery/pkg/runtime"
)

func main() {
	var (
		namespace        string
		metricsAddr      string
		probeAddr        string
		workers          int
		qps              float64
		burst            int
		leaderElect      bool
		progressDeadline int
	)
	// --kubeconfig is controller-runtime's own flag (pkg/client/config), read by GetConfig.
	flag.StringVar(&namespace, "namespace", "", "the one namespace to watch (default: all)")
	flag.StringVar(&metricsAddr, "metrics-bind-address", ":8080", "address of /metrics (0: off)")
	flag.StringVar(&probeAddr, "health-probe-bind-address", ":8081", "address of /healthz, /readyz")
	flag.IntVar(&workers, "max-concurrent-reconciles", 1, "MaxConcurrentReconciles")
	flag.Float64Var(&qps, "qps", 20, "client QPS toward the API server")
	flag.IntVar(&burst, "burst", 30, "client burst toward the API server")
	flag.BoolVar(&leaderElect, "leader-elect", false, "run only while holding the Lease")
	flag.IntVar(&progressDeadline, "progress-deadline", 600, "progressDeadlineSeconds of Deployments")
	opts := zap.Options{}
	opts.BindFlags(flag.CommandLine)
	flag.Parse()
	ctrl.SetLogger(zap.New(zap.UseFlagOptions(&opts)))
	log := ctrl.Log.WithName("setup")

	config, err := ctrl.GetConfig()
	if err != nil {
		log.Error(err, "cannot load the kubeconfig")
		os.Exit(1)
	}
	config.QPS = float32(qps)
	config.Burst = burst

	scheme := runtime.NewScheme()
	if err := clientgoscheme.AddToScheme(scheme); err != nil {
		log.Error(err, "scheme")
		os.Exit(1)
	}
	if err := SchemeBuilder.AddToScheme(scheme); err != nil {
		log.Error(err, "scheme")
		os.Exit(1)
	}

	options := ctrl.Options{
		Scheme:                  scheme,
		Metrics:                 metricsserver.Options{BindAddress: metricsAddr},
		HealthProbeBindAddress:  probeAddr,
		LeaderElection:          leaderElect,
		LeaderElectionID:        "memcached-operator-go-peer",
		LeaderElectionNamespace: namespace,
		GracefulShutdownTimeout: ptrDuration(5 * time.Second),
	}
	if namespace != "" {
		options.Cache = cache.Options{DefaultNamespaces: map[string]cache.Config{namespace: {}}}
	}
	mgr, err := ctrl.NewManager(config, options)
	if err != nil {
		log.Error(err, "cannot create the manager")
		os.Exit(1)
	}
	reconciler := &MemcachedReconciler{
		Client:           mgr.GetClient(),
		Scheme:           mgr.GetScheme(),
		Recorder:         mgr.GetEventRecorder("memcached-operator/status"),
		ProgressDeadline: int32(progressDeadline),
	}
	if err := reconciler.SetupWithManager(mgr, workers); err != nil {
		log.Error(err, "cannot set up the controller")
		os.Exit(1)
	}
	if err := mgr.AddHealthzCheck("healthz", healthz.Ping); err != nil {
		os.Exit(1)
	}
	if err := mgr.AddReadyzCheck("readyz", healthz.Ping); err != nil {
		os.Exit(1)
	}
	log.Info("starting", "namespace", namespace, "workers", workers, "qps", qps, "burst", burst,
		"leaderElect", leaderElect)
	if err := mgr.Start(ctrl.SetupSignalHandler()); err != nil {
		log.Error(err, "manager stopped")
		os.Exit(1)
	}
}

func ptrDuration(d time.Duration) *time.Duration { return &d }
