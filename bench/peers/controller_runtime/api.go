// The Memcached API type (cache.example.com/v1), written by hand the way `kubebuilder create
// api` lays it out: spec, status, the list type and their deep copies. Field names and JSON
// tags follow deploy/crd/memcacheds.cache.example.com.yaml; the API server applies the CRD's
// defaults, so every defaulted field arrives set.
package main

import (
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"sigs.k8s.io/controller-runtime/pkg/scheme"
)

var (
	GroupVersion  = schema.GroupVersion{Group: "cache.example.com", Version: "v1"}
	SchemeBuilder = &scheme.Builder{GroupVersion: GroupVersion}
)

type Monitoring struct {
	Enabled bool   `json:"enabled,omitempty"`
	Image   string `json:"image,omitempty"`
}

type MemcachedSpec struct {
	Size           int32                        `json:"size"`
	Image          string                       `json:"image,omitempty"`
	Resources      *corev1.ResourceRequirements `json:"resources,omitempty"`
	MemoryMB       *int32                       `json:"memoryMB,omitempty"`
	Monitoring     *Monitoring                  `json:"monitoring,omitempty"`
	MaxConnections int32                        `json:"maxConnections,omitempty"`
	MaxItemSize    int32                        `json:"maxItemSize,omitempty"`
}

type MemcachedStatus struct {
	Nodes              []string           `json:"nodes"`
	Endpoints          []string           `json:"endpoints"`
	EndpointCount      int32              `json:"endpointCount"`
	ReadyReplicas      int32              `json:"readyReplicas"`
	ObservedGeneration int64              `json:"observedGeneration"`
	Conditions         []metav1.Condition `json:"conditions,omitempty"`
	LastTraceID        string             `json:"lastTraceId,omitempty"`
}

type Memcached struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Spec   MemcachedSpec   `json:"spec,omitempty"`
	Status MemcachedStatus `json:"status,omitempty"`
}

type MemcachedList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []Memcached `json:"items"`
}

func init() {
	SchemeBuilder.Register(&Memcached{}, &MemcachedList{})
}

func (in *MemcachedSpec) DeepCopyInto(out *MemcachedSpec) {
	*out = *in
	if in.Resources != nil {
		out.Resources = in.Resources.DeepCopy()
	}
	if in.MemoryMB != nil {
		v := *in.MemoryMB
		out.MemoryMB = &v
	}
	if in.Monitoring != nil {
		m := *in.Monitoring
		out.Monitoring = &m
	}
}

func (in *MemcachedStatus) DeepCopyInto(out *MemcachedStatus) {
	*out = *in
	if in.Nodes != nil {
		out.Nodes = append([]string{}, in.Nodes...)
	}
	if in.Endpoints != nil {
		out.Endpoints = append([]string{}, in.Endpoints...)
	}
	if in.Conditions != nil {
		out.Conditions = make([]metav1.Condition, len(in.Conditions))
		for i := range in.Conditions {
			in.Conditions[i].DeepCopyInto(&out.Conditions[i])
		}
	}
}

func (in *Memcached) DeepCopyInto(out *Memcached) {
	*out = *in
	out.TypeMeta = in.TypeMeta
	in.ObjectMeta.DeepCopyInto(&out.ObjectMeta)
	in.Spec.DeepCopyInto(&out.Spec)
	in.Status.DeepCopyInto(&out.Status)
}

func (in *Memcached) DeepCopy() *Memcached {
	if in == nil {
		return nil
	}
	out := new(Memcached)
	in.DeepCopyInto(out)
	return out
}

func (in *Memcached) DeepCopyObject() runtime.Object { return in.DeepCopy() }

func (in *MemcachedList) DeepCopyInto(out *MemcachedList) {
	*out = *in
	out.TypeMeta = in.TypeMeta
	in.ListMeta.DeepCopyInto(&out.ListMeta)
	if in.Items != nil {
		out.Items = make([]Memcached, len(in.Items))
		for i := range in.Items {
			in.Items[i].DeepCopyInto(&out.Items[i])
		}
	}
}

func (in *MemcachedList) DeepCopyObject() runtime.Object {
	if in == nil {
		return nil
	}
	out := new(MemcachedList)
	in.DeepCopyInto(out)
	return out
}
