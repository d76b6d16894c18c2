// Kubernetes Events for the status's newsworthy condition transitions, as the status service
// records them (services/status/transitions.py, recorder.py): Available or Degraded appearing
// in its notable state or flipping, and Degraded=True changing its reason; Progressing never.
// One events.k8s.io/v1 Event each, through controller-runtime's recorder (mgr.GetEventRecorder),
// with the same type, reason, action and note. A healthy new CR gets one: Available.
package main

import (
	"fmt"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/events"
)

const (
	eventAction  = "StatusChanged"
	noteMaxBytes = 1024
)

// abnormal is transitions.abnormal: whether the condition describes a state to look at.
func abnormal(kind string, status metav1.ConditionStatus, reason string) bool {
	switch kind {
	case condAvailable:
		return status == metav1.ConditionFalse
	case condProgressing:
		return status == metav1.ConditionFalse && reason == progressDeadline
	case condDegraded:
		return status == metav1.ConditionTrue
	}
	return false
}

// newsworthy lists the conditions of “now“ whose change from “before“ deserves an Event.
func newsworthy(before, now []metav1.Condition) []metav1.Condition {
	var out []metav1.Condition
	for _, c := range now {
		if c.Type == condProgressing {
			continue
		}
		old := meta.FindStatusCondition(before, c.Type)
		warning := abnormal(c.Type, c.Status, c.Reason)
		switch {
		case old == nil:
			if (c.Type == condAvailable && c.Status == metav1.ConditionTrue) ||
				(c.Type != condAvailable && warning) {
				out = append(out, c)
			}
		case old.Status != c.Status:
			out = append(out, c)
		case old.Reason != c.Reason && c.Type != condAvailable && warning:
			out = append(out, c)
		}
	}
	return out
}

func eventNote(c metav1.Condition) string {
	note := fmt.Sprintf("%s is %s", c.Type, c.Status)
	if c.Message != "" {
		note += ": " + c.Message
	}
	if len(note) > noteMaxBytes {
		note = note[:noteMaxBytes-3] + "..."
	}
	return note
}

// recordTransitions records the Events of the status write from “before“ to “now“.
func recordTransitions(recorder events.EventRecorder, mc *Memcached, before, now []metav1.Condition) {
	for _, c := range newsworthy(before, now) {
		kind := corev1.EventTypeNormal
		if abnormal(c.Type, c.Status, c.Reason) {
			kind = corev1.EventTypeWarning
		}
		recorder.Eventf(mc, nil, kind, c.Reason, eventAction, "%s", eventNote(c))
	}
}
