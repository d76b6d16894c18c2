// The reconcile loop, the ordinary Kubebuilder way: read the Memcached from the cache; create
// each owned object (Deployment, headless Service, PDB from two replicas) with a controller
// reference, or update it when the live one lacks a field we set (semantic DeepDerivative, so
// server defaults are no difference and an unchanged object is not rewritten); list the pods
// from the cache; write the status when it changed. It runs on every change of the CR, of an
// owned object, and of a pod whose owner annotation names the CR. Errors requeue with the
// workqueue's rate-limited backoff, as controller-runtime does by default. A status write that
// changes a condition in a way worth telling records an Event (events.go), as ours does.
package main

import (
	"context"
	"fmt"
	"maps"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/events"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"
)

type MemcachedReconciler struct {
	client.Client
	Scheme           *runtime.Scheme
	Recorder         events.EventRecorder
	ProgressDeadline int32
}

func (r *MemcachedReconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	mc := &Memcached{}
	if err := r.Get(ctx, req.NamespacedName, mc); err != nil {
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	if !mc.DeletionTimestamp.IsZero() {
		return ctrl.Result{}, nil
	}

	deployment, owned, err := r.ensureDeployment(ctx, mc)
	if err == nil {
		err = r.ensureService(ctx, mc)
	}
	if err == nil {
		err = r.ensurePDB(ctx, mc)
	}

	pods := &corev1.PodList{}
	if listErr := r.List(ctx, pods, client.InNamespace(mc.Namespace),
		client.MatchingLabels(selectorLabels(mc))); listErr != nil {
		return ctrl.Result{}, listErr
	}
	status := foldStatus(mc, deployment, owned, pods.Items, err)
	if !equality.Semantic.DeepEqual(status, mc.Status) {
		before := mc.Status.Conditions
		mc.Status = status
		if statusErr := r.Status().Update(ctx, mc); statusErr != nil {
			if err == nil {
				err = statusErr
			}
		} else {
			recordTransitions(r.Recorder, mc, before, status.Conditions)
		}
	}
	return ctrl.Result{}, err
}

// ensureDeployment returns the live Deployment (nil if absent) and whether it is ours.
func (r *MemcachedReconciler) ensureDeployment(
	ctx context.Context, mc *Memcached,
) (*appsv1.Deployment, bool, error) {
	desired := desiredDeployment(mc, r.ProgressDeadline)
	live := &appsv1.Deployment{}
	err := r.Get(ctx, client.ObjectKeyFromObject(desired), live)
	if apierrors.IsNotFound(err) {
		if err := ctrl.SetControllerReference(mc, desired, r.Scheme); err != nil {
			return nil, false, err
		}
		if err := r.Create(ctx, desired); err != nil {
			return nil, false, err
		}
		return desired, true, nil
	}
	if err != nil {
		return nil, false, err
	}
	if !metav1.IsControlledBy(live, mc) {
		return live, false, fmt.Errorf("Deployment %s/%s is not controlled by this Memcached",
			live.Namespace, live.Name)
	}
	if equality.Semantic.DeepDerivative(desired.Spec, live.Spec) && hasMeta(&live.ObjectMeta, &desired.ObjectMeta) {
		return live, true, nil
	}
	live.Spec = desired.Spec
	mergeMeta(&live.ObjectMeta, &desired.ObjectMeta)
	if err := r.Update(ctx, live); err != nil {
		return nil, true, err
	}
	return live, true, nil
}

func (r *MemcachedReconciler) ensureService(ctx context.Context, mc *Memcached) error {
	desired := desiredService(mc)
	live := &corev1.Service{}
	err := r.Get(ctx, client.ObjectKeyFromObject(desired), live)
	if apierrors.IsNotFound(err) {
		if err := ctrl.SetControllerReference(mc, desired, r.Scheme); err != nil {
			return err
		}
		return r.Create(ctx, desired)
	}
	if err != nil {
		return err
	}
	if !metav1.IsControlledBy(live, mc) {
		return fmt.Errorf("Service %s/%s is not controlled by this Memcached", live.Namespace, live.Name)
	}
	if equality.Semantic.DeepDerivative(desired.Spec, live.Spec) && hasMeta(&live.ObjectMeta, &desired.ObjectMeta) {
		return nil
	}
	// Keep what the API server allocated (cluster IPs, families); set what we own.
	live.Spec.Selector = desired.Spec.Selector
	live.Spec.Ports = desired.Spec.Ports
	live.Spec.Type = desired.Spec.Type
	mergeMeta(&live.ObjectMeta, &desired.ObjectMeta)
	return r.Update(ctx, live)
}

func (r *MemcachedReconciler) ensurePDB(ctx context.Context, mc *Memcached) error {
	desired := desiredPDB(mc)
	live := &policyv1.PodDisruptionBudget{}
	err := r.Get(ctx, client.ObjectKey{Namespace: mc.Namespace, Name: mc.Name}, live)
	if apierrors.IsNotFound(err) {
		if desired == nil {
			return nil
		}
		if err := ctrl.SetControllerReference(mc, desired, r.Scheme); err != nil {
			return err
		}
		return r.Create(ctx, desired)
	}
	if err != nil {
		return err
	}
	if !metav1.IsControlledBy(live, mc) {
		return fmt.Errorf("PodDisruptionBudget %s/%s is not controlled by this Memcached",
			live.Namespace, live.Name)
	}
	if desired == nil {
		return client.IgnoreNotFound(r.Delete(ctx, live))
	}
	if equality.Semantic.DeepDerivative(desired.Spec, live.Spec) && hasMeta(&live.ObjectMeta, &desired.ObjectMeta) {
		return nil
	}
	live.Spec = desired.Spec
	mergeMeta(&live.ObjectMeta, &desired.ObjectMeta)
	return r.Update(ctx, live)
}

func hasMeta(live, desired *metav1.ObjectMeta) bool {
	for k, v := range desired.Labels {
		if live.Labels[k] != v {
			return false
		}
	}
	for k, v := range desired.Annotations {
		if live.Annotations[k] != v {
			return false
		}
	}
	return true
}

func mergeMeta(live, desired *metav1.ObjectMeta) {
	if live.Labels == nil {
		live.Labels = map[string]string{}
	}
	if live.Annotations == nil {
		live.Annotations = map[string]string{}
	}
	maps.Copy(live.Labels, desired.Labels)
	maps.Copy(live.Annotations, desired.Annotations)
}

func podOwner(_ context.Context, pod client.Object) []reconcile.Request {
	name := pod.GetAnnotations()[ownerAnnotation]
	if name == "" || pod.GetLabels()[labelManagedBy] != managedBy {
		return nil
	}
	return []reconcile.Request{{NamespacedName: types.NamespacedName{
		Namespace: pod.GetNamespace(), Name: name,
	}}}
}

func (r *MemcachedReconciler) SetupWithManager(mgr ctrl.Manager, workers int) error {
	return ctrl.NewControllerManagedBy(mgr).
		For(&Memcached{}).
		Owns(&appsv1.Deployment{}).
		Owns(&corev1.Service{}).
		Owns(&policyv1.PodDisruptionBudget{}).
		// Pods belong to ReplicaSets, not to the CR, so Owns cannot map them; the owner
		// annotation of our template names the CR. Without this watch a pod's readiness would
		// reach status.nodes/endpoints only with the next Deployment event, where the status
		// service folds every pod event in.
		Watches(&corev1.Pod{}, handler.EnqueueRequestsFromMapFunc(podOwner)).
		Named("memcached").
		WithOptions(controller.Options{MaxConcurrentReconciles: workers}).
		Complete(r)
}
