// What a Memcached owns, built exactly as services/reconciler/desired.py and companions.py build
// it: the Deployment (same labels, annotations, command line, ports, resources, security
// contexts, spread, strategy and progress deadline), the headless Service and, from two
// replicas, the PodDisruptionBudget. The bench's observer checks every Deployment against the
// Python builder, so a field missing here would show as a Deployment never "correct".
package main

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"regexp"
	"strings"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"
)

const (
	memcachedPort   = 11211
	exporterPort    = 9150
	containerName   = "memcached"
	exporterName    = "memcached-exporter"
	ownerAnnotation = "cache.example.com/memcached"
	labelName       = "app.kubernetes.io/name"
	labelInstance   = "app.kubernetes.io/instance"
	labelManagedBy  = "app.kubernetes.io/managed-by"
	managedBy       = "memcached-operator"
	topologyKey     = "kubernetes.io/hostname"
	runAsUser       = int64(11211)
	defaultMemoryMB = 64
	overheadMinMB   = 16
	memoryMBMax     = 1 << 20
	mebibyte        = 1 << 20
	pdbMinSize      = 2
	servicePortName = "memcache"
	labelValueMax   = 63
	labelHashLength = 8
)

var (
	labelValueRe  = regexp.MustCompile(`^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$`)
	notLabelChars = regexp.MustCompile(`[^-A-Za-z0-9_.]`)
)

// labelValue is contract.label_value: the name itself when it is a valid label value, else a
// readable prefix plus a hash of the whole name.
func labelValue(text string) string {
	if len(text) <= labelValueMax && labelValueRe.MatchString(text) {
		return text
	}
	sum := sha256.Sum256([]byte(text))
	digest := hex.EncodeToString(sum[:])[:labelHashLength]
	prefix := notLabelChars.ReplaceAllString(text, "-")
	if len(prefix) > labelValueMax-labelHashLength-1 {
		prefix = prefix[:labelValueMax-labelHashLength-1]
	}
	prefix = strings.Trim(prefix, "-_.")
	if prefix == "" {
		return digest
	}
	return prefix + "-" + digest
}

func selectorLabels(mc *Memcached) map[string]string {
	return map[string]string{
		labelName:      "memcached",
		labelInstance:  labelValue(mc.Name),
		labelManagedBy: managedBy,
	}
}

func objectMeta(mc *Memcached) metav1.ObjectMeta {
	return metav1.ObjectMeta{
		Name:        mc.Name,
		Namespace:   mc.Namespace,
		Labels:      selectorLabels(mc),
		Annotations: map[string]string{ownerAnnotation: mc.Name},
	}
}

// cacheMemoryMB is desired.cache_memory_mb: memcached's -m.
func cacheMemoryMB(spec *MemcachedSpec) int64 {
	if spec.MemoryMB != nil {
		return int64(*spec.MemoryMB)
	}
	derived := int64(defaultMemoryMB)
	if spec.Resources != nil {
		if limit, ok := spec.Resources.Limits[corev1.ResourceMemory]; ok {
			limitMB := limit.Value() / mebibyte
			overhead := (limitMB + 9) / 10
			if overhead < overheadMinMB {
				overhead = overheadMinMB
			}
			derived = limitMB - overhead
		}
	}
	least := (2*int64(spec.MaxItemSize) + mebibyte - 1) / mebibyte
	return min(max(derived, least), memoryMBMax)
}

func memcachedCommand(spec *MemcachedSpec) []string {
	return []string{
		"memcached",
		"-m", fmt.Sprint(cacheMemoryMB(spec)),
		"-c", fmt.Sprint(spec.MaxConnections),
		"-I", fmt.Sprintf("%dk", spec.MaxItemSize/1024),
		"-o", "modern",
		"-v",
	}
}

func containerSecurityContext() *corev1.SecurityContext {
	return &corev1.SecurityContext{
		RunAsNonRoot:             ptr.To(true),
		RunAsUser:                ptr.To(runAsUser),
		AllowPrivilegeEscalation: ptr.To(false),
		Capabilities:             &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}},
		ReadOnlyRootFilesystem:   ptr.To(true),
		SeccompProfile:           &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault},
	}
}

func desiredDeployment(mc *Memcached, progressDeadline int32) *appsv1.Deployment {
	labels := selectorLabels(mc)
	container := corev1.Container{
		Name:    containerName,
		Image:   mc.Spec.Image,
		Command: memcachedCommand(&mc.Spec),
		Ports: []corev1.ContainerPort{
			{Name: "memcached", ContainerPort: memcachedPort, Protocol: corev1.ProtocolTCP},
		},
		SecurityContext: containerSecurityContext(),
	}
	if mc.Spec.Resources != nil {
		container.Resources = *mc.Spec.Resources.DeepCopy()
	}
	templateAnnotations := map[string]string{ownerAnnotation: mc.Name}
	containers := []corev1.Container{container}
	if mc.Spec.Monitoring != nil && mc.Spec.Monitoring.Enabled {
		templateAnnotations["prometheus.io/scrape"] = "true"
		templateAnnotations["prometheus.io/port"] = fmt.Sprint(exporterPort)
		templateAnnotations["prometheus.io/path"] = "/metrics"
		exporter := corev1.Container{
			Name:  exporterName,
			Image: mc.Spec.Monitoring.Image,
			Args:  []string{fmt.Sprintf("--memcached.address=localhost:%d", memcachedPort)},
			Ports: []corev1.ContainerPort{
				{Name: "metrics", ContainerPort: exporterPort, Protocol: corev1.ProtocolTCP},
			},
			SecurityContext: containerSecurityContext(),
		}
		exporter.Resources.Requests = corev1.ResourceList{}
		exporter.Resources.Limits = corev1.ResourceList{}
		exporter.Resources.Requests[corev1.ResourceCPU] = resource.MustParse("10m")
		exporter.Resources.Requests[corev1.ResourceMemory] = resource.MustParse("16Mi")
		exporter.Resources.Limits[corev1.ResourceCPU] = resource.MustParse("100m")
		exporter.Resources.Limits[corev1.ResourceMemory] = resource.MustParse("32Mi")
		containers = append(containers, exporter)
	}
	maxUnavailable := intstr.FromInt32(1)
	maxSurge := intstr.FromInt32(0)
	return &appsv1.Deployment{
		ObjectMeta: objectMeta(mc),
		Spec: appsv1.DeploymentSpec{
			Replicas: ptr.To(mc.Spec.Size),
			Selector: &metav1.LabelSelector{MatchLabels: selectorLabels(mc)},
			Strategy: appsv1.DeploymentStrategy{
				Type: appsv1.RollingUpdateDeploymentStrategyType,
				RollingUpdate: &appsv1.RollingUpdateDeployment{
					MaxUnavailable: &maxUnavailable,
					MaxSurge:       &maxSurge,
				},
			},
			ProgressDeadlineSeconds: ptr.To(progressDeadline),
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels, Annotations: templateAnnotations},
				Spec: corev1.PodSpec{
					Containers: containers,
					TopologySpreadConstraints: []corev1.TopologySpreadConstraint{{
						MaxSkew:           1,
						TopologyKey:       topologyKey,
						WhenUnsatisfiable: corev1.ScheduleAnyway,
						LabelSelector:     &metav1.LabelSelector{MatchLabels: selectorLabels(mc)},
					}},
					SecurityContext: &corev1.PodSecurityContext{
						RunAsNonRoot:   ptr.To(true),
						RunAsUser:      ptr.To(runAsUser),
						RunAsGroup:     ptr.To(runAsUser),
						SeccompProfile: &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault},
					},
					AutomountServiceAccountToken: ptr.To(false),
				},
			},
		},
	}
}

// desiredService is companions.desired_service: headless, one A record per ready pod.
func desiredService(mc *Memcached) *corev1.Service {
	return &corev1.Service{
		ObjectMeta: objectMeta(mc),
		Spec: corev1.ServiceSpec{
			ClusterIP: corev1.ClusterIPNone,
			Type:      corev1.ServiceTypeClusterIP,
			Selector:  selectorLabels(mc),
			Ports: []corev1.ServicePort{{
				Name:       servicePortName,
				Port:       memcachedPort,
				TargetPort: intstr.FromInt32(memcachedPort),
				Protocol:   corev1.ProtocolTCP,
			}},
		},
	}
}

// desiredPDB is companions.desired_pdb: nil below two replicas (an existing one is deleted).
func desiredPDB(mc *Memcached) *policyv1.PodDisruptionBudget {
	if mc.Spec.Size < pdbMinSize {
		return nil
	}
	maxUnavailable := intstr.FromInt32(1)
	return &policyv1.PodDisruptionBudget{
		ObjectMeta: objectMeta(mc),
		Spec: policyv1.PodDisruptionBudgetSpec{
			MaxUnavailable: &maxUnavailable,
			Selector:       &metav1.LabelSelector{MatchLabels: selectorLabels(mc)},
		},
	}
}
