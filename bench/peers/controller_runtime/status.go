// The Memcached's status from its Deployment, its ready pods and this reconcile's result, with
// the same fields and the same condition reasons as services/status/conditions.py (Available,
// Progressing, Degraded; metav1.Condition semantics through meta.SetStatusCondition). Here the
// "outcome" is the reconcile that just ran in this process, where ours comes from the stream.
package main

import (
	"fmt"
	"net"
	"regexp"
	"sort"
	"strings"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

const (
	condAvailable   = "Available"
	condProgressing = "Progressing"
	condDegraded    = "Degraded"

	allReplicasReady      = "AllReplicasReady"
	replicasNotReady      = "ReplicasNotReady"
	deploymentMissing     = "DeploymentMissing"
	deploymentNotOwned    = "DeploymentNotOwned"
	deploymentUnavailable = "DeploymentUnavailable"
	waitingForDeployment  = "WaitingForDeployment"
	rolloutInProgress     = "RolloutInProgress"
	rolloutComplete       = "RolloutComplete"
	reconcileFailed       = "ReconcileFailed"
	reconcileSucceeded    = "ReconcileSucceeded"
	progressDeadline      = "ProgressDeadlineExceeded"
	replicaFailure        = "ReplicaFailure"
	nodesMax              = 2000
	messageMax            = 32768
)

var reasonRe = regexp.MustCompile(`^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$`)

type verdict struct {
	status  metav1.ConditionStatus
	reason  string
	message string
}

func fitReason(reason, fallback string) string {
	reason = strings.TrimSpace(reason)
	if len(reason) <= 1024 && reasonRe.MatchString(reason) {
		return reason
	}
	return fallback
}

func fitMessage(message string) string {
	if len(message) <= messageMax {
		return message
	}
	return message[:messageMax-3] + "..."
}

// deploymentView is deployment_view.DeploymentView: the counts and conditions folded.
type deploymentView struct {
	specReplicas                          int32
	observed                              bool
	replicas, updated, ready, available   int32
	availableCond, progressingCond, failC *appsv1.DeploymentCondition
}

func viewOf(d *appsv1.Deployment, size int32) *deploymentView {
	v := &deploymentView{
		specReplicas: size,
		observed:     d.Status.ObservedGeneration >= d.Generation,
		replicas:     d.Status.Replicas,
		updated:      d.Status.UpdatedReplicas,
		ready:        d.Status.ReadyReplicas,
		available:    d.Status.AvailableReplicas,
	}
	if d.Spec.Replicas != nil {
		v.specReplicas = *d.Spec.Replicas
	}
	for i := range d.Status.Conditions {
		c := &d.Status.Conditions[i]
		switch c.Type {
		case appsv1.DeploymentAvailable:
			v.availableCond = c
		case appsv1.DeploymentProgressing:
			v.progressingCond = c
		case appsv1.DeploymentReplicaFailure:
			v.failC = c
		}
	}
	return v
}

func (v *deploymentView) deadlineExceeded() bool {
	return v.observed && v.progressingCond != nil && v.progressingCond.Reason == progressDeadline
}

func (v *deploymentView) deadlineMessage() string {
	if v.progressingCond != nil && strings.TrimSpace(v.progressingCond.Message) != "" {
		return strings.TrimSpace(v.progressingCond.Message)
	}
	return "the rollout did not progress within its progress deadline"
}

func (v *deploymentView) replicaFailure() (string, string, bool) {
	if v.failC == nil || v.failC.Status != corev1.ConditionTrue {
		return "", "", false
	}
	message := strings.TrimSpace(v.failC.Message)
	if message == "" {
		message = "the ReplicaSet could not create or delete pods"
	}
	return fitReason(v.failC.Reason, replicaFailure), message, true
}

func available(v *deploymentView, size int32, missing verdict) verdict {
	if v == nil {
		return missing
	}
	counts := fmt.Sprintf("%d/%d replicas ready", v.ready, size)
	if size == 0 {
		if v.observed {
			return verdict{metav1.ConditionTrue, allReplicasReady, counts + ": scaled to zero"}
		}
		return verdict{metav1.ConditionFalse, waitingForDeployment,
			"waiting for the Deployment controller to observe the latest spec"}
	}
	depAvailable := v.availableCond != nil && v.availableCond.Status == corev1.ConditionTrue
	if v.ready >= size && depAvailable {
		return verdict{metav1.ConditionTrue, allReplicasReady, counts}
	}
	if v.deadlineExceeded() {
		return verdict{metav1.ConditionFalse, progressDeadline, counts + ": " + v.deadlineMessage()}
	}
	if reason, message, ok := v.replicaFailure(); ok && v.ready < size {
		return verdict{metav1.ConditionFalse, reason, counts + ": " + message}
	}
	if v.ready >= size {
		message := counts + ", but the Deployment is not available"
		if v.availableCond != nil && strings.TrimSpace(v.availableCond.Message) != "" {
			message += ": " + strings.TrimSpace(v.availableCond.Message)
		}
		return verdict{metav1.ConditionFalse, deploymentUnavailable, message}
	}
	return verdict{metav1.ConditionFalse, replicasNotReady, counts}
}

func progressing(v *deploymentView, size int32, missing verdict, degraded bool) verdict {
	if v == nil {
		if degraded {
			return verdict{metav1.ConditionFalse, reconcileFailed,
				"no rollout can start until the reconcile succeeds (see the Degraded condition)"}
		}
		return verdict{metav1.ConditionTrue, missing.reason, missing.message}
	}
	if !v.observed || v.specReplicas != size {
		return verdict{metav1.ConditionTrue, rolloutInProgress,
			fmt.Sprintf("waiting for the Deployment to take on the latest spec (%d replicas)", size)}
	}
	if v.deadlineExceeded() {
		return verdict{metav1.ConditionFalse, progressDeadline, v.deadlineMessage()}
	}
	if reason, _, ok := v.replicaFailure(); ok {
		return verdict{metav1.ConditionFalse, reason,
			"the rollout cannot progress: pods cannot be created or deleted " +
				"(see the Degraded condition)"}
	}
	rolling := false
	if v.progressingCond != nil {
		switch v.progressingCond.Reason {
		case "ReplicaSetUpdated", "NewReplicaSetCreated", "FoundNewReplicaSet":
			rolling = true
		}
	}
	if v.replicas != size || v.updated != size || v.ready != size || (rolling && v.available < size) {
		return verdict{metav1.ConditionTrue, rolloutInProgress, fmt.Sprintf(
			"%d/%d replicas ready, %d/%d updated, %d running",
			v.ready, size, v.updated, size, v.replicas)}
	}
	return verdict{metav1.ConditionFalse, rolloutComplete,
		fmt.Sprintf("%d/%d replicas updated and ready", size, size)}
}

func degraded(reconcileErr error, v *deploymentView, generation int64) verdict {
	if reconcileErr != nil {
		message := strings.TrimSpace(reconcileErr.Error())
		if message == "" {
			message = "the last reconcile failed"
		}
		return verdict{metav1.ConditionTrue, reconcileFailed, fitMessage(message)}
	}
	if v != nil {
		if reason, message, ok := v.replicaFailure(); ok {
			return verdict{metav1.ConditionTrue, reason, fitMessage(message)}
		}
		if v.deadlineExceeded() {
			return verdict{metav1.ConditionTrue, progressDeadline, v.deadlineMessage()}
		}
	}
	return verdict{metav1.ConditionFalse, reconcileSucceeded,
		fmt.Sprintf("generation %d was reconciled successfully", generation)}
}

func podReady(pod *corev1.Pod) bool {
	if pod.DeletionTimestamp != nil {
		return false
	}
	for _, c := range pod.Status.Conditions {
		if c.Type == corev1.PodReady && c.Status == corev1.ConditionTrue {
			return true
		}
	}
	return false
}

// readyPods is endpoints.ready_nodes and ready_endpoints: the names of the CR's Ready pods (by
// the owner annotation) and their host:port, both sorted.
func readyPods(mc *Memcached, pods []corev1.Pod) ([]string, []string) {
	nodes := []string{}
	seen := map[string]bool{}
	endpoints := []string{}
	for i := range pods {
		pod := &pods[i]
		if pod.Annotations[ownerAnnotation] != mc.Name || !podReady(pod) {
			continue
		}
		nodes = append(nodes, pod.Name)
		ip := net.ParseIP(pod.Status.PodIP)
		if ip == nil {
			continue
		}
		endpoint := net.JoinHostPort(ip.String(), fmt.Sprint(memcachedPort))
		if !seen[endpoint] {
			seen[endpoint] = true
			endpoints = append(endpoints, endpoint)
		}
	}
	sort.Strings(nodes)
	sort.Strings(endpoints)
	if len(nodes) > nodesMax {
		nodes = nodes[:nodesMax]
	}
	if len(endpoints) > nodesMax {
		endpoints = endpoints[:nodesMax]
	}
	return nodes, endpoints
}

// foldStatus is conditions.fold_status: the new status of “mc“ (a copy of the old one with
// every field set); deployment is nil when it does not exist, owned says whether it is ours.
func foldStatus(
	mc *Memcached, deployment *appsv1.Deployment, owned bool, pods []corev1.Pod, reconcileErr error,
) MemcachedStatus {
	size := mc.Spec.Size
	generation := mc.Generation
	ref := fmt.Sprintf("Deployment %s/%s", mc.Namespace, mc.Name)
	missing := verdict{metav1.ConditionFalse, deploymentMissing, ref + " does not exist yet"}
	var view *deploymentView
	if deployment != nil {
		if owned {
			view = viewOf(deployment, size)
		} else {
			missing = verdict{metav1.ConditionFalse, deploymentNotOwned,
				ref + " exists but is not controlled by this Memcached"}
		}
	}
	status := *mc.Status.DeepCopyStatus()
	deg := degraded(reconcileErr, view, generation)
	set := func(kind string, v verdict) {
		meta.SetStatusCondition(&status.Conditions, metav1.Condition{
			Type: kind, Status: v.status, Reason: v.reason, Message: fitMessage(v.message),
			ObservedGeneration: generation,
		})
	}
	set(condAvailable, available(view, size, missing))
	set(condProgressing, progressing(view, size, missing, deg.status == metav1.ConditionTrue))
	set(condDegraded, deg)
	status.Nodes, status.Endpoints = readyPods(mc, pods)
	status.EndpointCount = int32(len(status.Endpoints))
	status.ReadyReplicas = 0
	if view != nil {
		status.ReadyReplicas = view.ready
	}
	status.ObservedGeneration = generation
	return status
}

func (in *MemcachedStatus) DeepCopyStatus() *MemcachedStatus {
	out := new(MemcachedStatus)
	in.DeepCopyInto(out)
	return out
}
