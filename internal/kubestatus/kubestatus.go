// Package kubestatus writes errors the way the Kubernetes API server does: a
// metav1.Status object with the right HTTP code, so kubectl prints
// "Error from server (ServiceUnavailable): …" instead of a bare status line.
package kubestatus

import (
	"encoding/json"
	"net/http"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Write sends err as a Status with err's code.
func Write(w http.ResponseWriter, err *apierrors.StatusError) {
	st := err.ErrStatus
	st.Kind, st.APIVersion = "Status", "v1"
	st.Status = metav1.StatusFailure
	body, _ := json.Marshal(st)
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Del("Content-Length")
	w.WriteHeader(int(st.Code))
	_, _ = w.Write(append(body, '\n'))
}

// ServiceUnavailable is 503 with reason ServiceUnavailable and msg.
func ServiceUnavailable(msg string) *apierrors.StatusError {
	return apierrors.NewServiceUnavailable(msg)
}

// Unauthorized is 401 with msg.
func Unauthorized(msg string) *apierrors.StatusError { return apierrors.NewUnauthorized(msg) }

// Forbidden is a 403 whose message is msg, not tied to a resource.
func Forbidden(msg string) *apierrors.StatusError {
	return &apierrors.StatusError{ErrStatus: metav1.Status{
		Status: metav1.StatusFailure, Code: http.StatusForbidden, Reason: metav1.StatusReasonForbidden, Message: msg,
	}}
}

// NotFound is a 404 whose message is msg.
func NotFound(msg string) *apierrors.StatusError {
	return &apierrors.StatusError{ErrStatus: metav1.Status{
		Status: metav1.StatusFailure, Code: http.StatusNotFound, Reason: metav1.StatusReasonNotFound, Message: msg,
	}}
}

// RequestHeaderFieldsTooLarge is a 431 (reason RequestHeaderFieldsTooLarge)
// whose message is msg. kube-apiserver leaves this answer to Go's server,
// which writes it as plain text; a Status lets kubectl print why.
func RequestHeaderFieldsTooLarge(msg string) *apierrors.StatusError {
	return &apierrors.StatusError{ErrStatus: metav1.Status{
		Status: metav1.StatusFailure, Code: http.StatusRequestHeaderFieldsTooLarge, Reason: "RequestHeaderFieldsTooLarge", Message: msg,
	}}
}

// BadGateway is a 502 (reason InternalError) whose message is msg.
func BadGateway(msg string) *apierrors.StatusError {
	return &apierrors.StatusError{ErrStatus: metav1.Status{
		Status: metav1.StatusFailure, Code: http.StatusBadGateway, Reason: metav1.StatusReasonInternalError, Message: msg,
	}}
}
