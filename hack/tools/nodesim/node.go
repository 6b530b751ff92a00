package main

import (
	"context"
	"fmt"
	"log"
	"os"
	"path/filepath"
	"runtime"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/informers"
	listersv1 "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/retry"
	"k8s.io/client-go/util/workqueue"
)

const notReadyTaint = "node.kubernetes.io/not-ready"

// registerNode creates (or takes over) the Node and sets its status.
func (s *sim) registerNode(ctx context.Context) error {
	node := &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{
			Name: s.cfg.nodeName,
			Labels: map[string]string{
				"kubernetes.io/hostname":        s.cfg.nodeName,
				"kubernetes.io/os":              runtime.GOOS,
				"kubernetes.io/arch":            runtime.GOARCH,
				"nodesim.keyhole.dev/simulated": "true",
			},
		},
	}
	// The API server may still be starting; retry for a while.
	err := wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, 60*time.Second, true, func(ctx context.Context) (bool, error) {
		_, err := s.cs.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{})
		if err == nil || apierrors.IsAlreadyExists(err) {
			return true, nil
		}
		log.Printf("registering node: %v (retrying)", err)
		return false, nil
	})
	if err != nil {
		return fmt.Errorf("registering node %q: %w", s.cfg.nodeName, err)
	}
	// TaintNodesByCondition admission adds the not-ready taint on creation; the
	// node lifecycle controller (not running here) would remove it.
	err = retry.RetryOnConflict(retry.DefaultRetry, func() error {
		n, err := s.cs.CoreV1().Nodes().Get(ctx, s.cfg.nodeName, metav1.GetOptions{})
		if err != nil {
			return err
		}
		var taints []corev1.Taint
		for _, t := range n.Spec.Taints {
			if t.Key != notReadyTaint {
				taints = append(taints, t)
			}
		}
		if len(taints) == len(n.Spec.Taints) {
			return nil
		}
		n.Spec.Taints = taints
		_, err = s.cs.CoreV1().Nodes().Update(ctx, n, metav1.UpdateOptions{})
		return err
	})
	if err != nil {
		return fmt.Errorf("removing taint: %w", err)
	}
	return s.updateNodeStatus(ctx)
}

func (s *sim) updateNodeStatus(ctx context.Context) error {
	return retry.RetryOnConflict(retry.DefaultRetry, func() error {
		n, err := s.cs.CoreV1().Nodes().Get(ctx, s.cfg.nodeName, metav1.GetOptions{})
		if err != nil {
			return err
		}
		now := metav1.Now()
		res := corev1.ResourceList{
			corev1.ResourceCPU:              resource.MustParse("32"),
			corev1.ResourceMemory:           resource.MustParse("64Gi"),
			corev1.ResourcePods:             resource.MustParse("110"),
			corev1.ResourceEphemeralStorage: resource.MustParse("100Gi"),
		}
		cond := func(t corev1.NodeConditionType, st corev1.ConditionStatus, reason, msg string) corev1.NodeCondition {
			c := corev1.NodeCondition{Type: t, Status: st, Reason: reason, Message: msg, LastHeartbeatTime: now, LastTransitionTime: now}
			for _, old := range n.Status.Conditions {
				if old.Type == t && old.Status == st {
					c.LastTransitionTime = old.LastTransitionTime
				}
			}
			return c
		}
		n.Status.Capacity = res
		n.Status.Allocatable = res
		n.Status.Phase = corev1.NodeRunning
		n.Status.Conditions = []corev1.NodeCondition{
			cond(corev1.NodeMemoryPressure, corev1.ConditionFalse, "KubeletHasSufficientMemory", "nodesim has sufficient memory available"),
			cond(corev1.NodeDiskPressure, corev1.ConditionFalse, "KubeletHasNoDiskPressure", "nodesim has no disk pressure"),
			cond(corev1.NodePIDPressure, corev1.ConditionFalse, "KubeletHasSufficientPID", "nodesim has sufficient PID available"),
			cond(corev1.NodeReady, corev1.ConditionTrue, "KubeletReady", "nodesim is posting ready status"),
		}
		n.Status.Addresses = []corev1.NodeAddress{
			{Type: corev1.NodeInternalIP, Address: s.cfg.address},
			{Type: corev1.NodeHostName, Address: s.cfg.nodeName},
		}
		n.Status.DaemonEndpoints.KubeletEndpoint.Port = s.port
		n.Status.NodeInfo = corev1.NodeSystemInfo{
			MachineID:               "nodesim",
			SystemUUID:              "nodesim-" + s.cfg.nodeName,
			BootID:                  "nodesim",
			KernelVersion:           "nodesim",
			OSImage:                 "nodesim (host processes)",
			ContainerRuntimeVersion: "nodesim://1.0.0",
			KubeletVersion:          "v1.33.13",
			KubeProxyVersion:        "",
			OperatingSystem:         runtime.GOOS,
			Architecture:            runtime.GOARCH,
		}
		_, err = s.cs.CoreV1().Nodes().UpdateStatus(ctx, n, metav1.UpdateOptions{})
		return err
	})
}

func (s *sim) heartbeatLoop(ctx context.Context) {
	t := time.NewTicker(s.cfg.heartbeat)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if err := s.updateNodeStatus(ctx); err != nil && ctx.Err() == nil {
				log.Printf("updating node status: %v", err)
			}
		}
	}
}

// informerPods implements podLister on top of a shared informer.
type informerPods struct{ lister listersv1.PodLister }

func (p informerPods) get(namespace, name string) (*corev1.Pod, bool) {
	pod, err := p.lister.Pods(namespace).Get(name)
	if err != nil {
		return nil, false
	}
	return pod, true
}

// startPods starts the pod informer and the worker that makes every pod bound
// to this node Running and Ready.
func (s *sim) startPods(ctx context.Context) error {
	factory := informers.NewSharedInformerFactoryWithOptions(s.cs, 0,
		informers.WithTweakListOptions(func(o *metav1.ListOptions) {
			o.FieldSelector = fields.OneTermEqualSelector("spec.nodeName", s.cfg.nodeName).String()
		}))
	inf := factory.Core().V1().Pods()
	queue := workqueue.NewTypedRateLimitingQueue(workqueue.NewTypedItemExponentialFailureRateLimiter[string](50*time.Millisecond, 5*time.Second))
	enqueue := func(obj any) {
		if key, err := cache.MetaNamespaceKeyFunc(obj); err == nil {
			queue.Add(key)
		}
	}
	if _, err := inf.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    enqueue,
		UpdateFunc: func(_, obj any) { enqueue(obj) },
	}); err != nil {
		return err
	}
	s.pods = informerPods{inf.Lister()}
	factory.Start(ctx.Done())
	go func() {
		<-ctx.Done()
		queue.ShutDown()
	}()
	go func() {
		for {
			key, quit := queue.Get()
			if quit {
				return
			}
			if err := s.syncPod(ctx, key); err != nil {
				if ctx.Err() == nil {
					log.Printf("syncing pod %s: %v (retrying)", key, err)
					queue.AddRateLimited(key)
				}
			} else {
				queue.Forget(key)
			}
			queue.Done(key)
		}
	}()
	syncCtx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	if !cache.WaitForCacheSync(syncCtx.Done(), inf.Informer().HasSynced) {
		return fmt.Errorf("pod informer did not sync")
	}
	return nil
}

func (s *sim) syncPod(ctx context.Context, key string) error {
	ns, name, err := cache.SplitMetaNamespaceKey(key)
	if err != nil {
		return nil
	}
	pod, ok := s.pods.get(ns, name)
	if !ok {
		return nil
	}
	if pod.DeletionTimestamp != nil {
		zero := int64(0)
		uid := pod.UID
		err := s.cs.CoreV1().Pods(ns).Delete(ctx, name, metav1.DeleteOptions{
			GracePeriodSeconds: &zero,
			Preconditions:      &metav1.Preconditions{UID: &uid},
		})
		if err != nil && !apierrors.IsNotFound(err) && !apierrors.IsConflict(err) {
			return err
		}
		return nil
	}
	for _, c := range pod.Spec.Containers {
		p := s.logPath(ns, name, c.Name)
		if _, err := os.Stat(p); os.IsNotExist(err) {
			if err := os.WriteFile(p, nil, 0o644); err != nil {
				return err
			}
		}
	}
	if podIsRunning(pod, s.cfg.address) {
		return nil
	}
	pod = pod.DeepCopy()
	now := metav1.Now()
	st := &pod.Status
	st.Phase = corev1.PodRunning
	st.HostIP = s.cfg.address
	st.HostIPs = []corev1.HostIP{{IP: s.cfg.address}}
	st.PodIP = s.cfg.address
	st.PodIPs = []corev1.PodIP{{IP: s.cfg.address}}
	if st.StartTime == nil {
		st.StartTime = &now
	}
	st.Conditions = []corev1.PodCondition{
		{Type: corev1.PodReadyToStartContainers, Status: corev1.ConditionTrue, LastTransitionTime: now},
		{Type: corev1.PodInitialized, Status: corev1.ConditionTrue, LastTransitionTime: now},
		{Type: corev1.ContainersReady, Status: corev1.ConditionTrue, LastTransitionTime: now},
		{Type: corev1.PodReady, Status: corev1.ConditionTrue, LastTransitionTime: now},
		{Type: corev1.PodScheduled, Status: corev1.ConditionTrue, LastTransitionTime: now},
	}
	st.InitContainerStatuses = nil
	for _, c := range pod.Spec.InitContainers {
		st.InitContainerStatuses = append(st.InitContainerStatuses, corev1.ContainerStatus{
			Name: c.Name, Image: c.Image, ImageID: "nodesim://" + c.Image,
			ContainerID: "nodesim://" + string(pod.UID) + "-" + c.Name,
			Ready:       true,
			State: corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{
				ExitCode: 0, Reason: "Completed", StartedAt: now, FinishedAt: now,
			}},
		})
	}
	st.ContainerStatuses = nil
	started := true
	for _, c := range pod.Spec.Containers {
		st.ContainerStatuses = append(st.ContainerStatuses, corev1.ContainerStatus{
			Name: c.Name, Image: c.Image, ImageID: "nodesim://" + c.Image,
			ContainerID: "nodesim://" + string(pod.UID) + "-" + c.Name,
			Ready:       true,
			Started:     &started,
			State:       corev1.ContainerState{Running: &corev1.ContainerStateRunning{StartedAt: now}},
		})
	}
	_, err = s.cs.CoreV1().Pods(ns).UpdateStatus(ctx, pod, metav1.UpdateOptions{})
	if apierrors.IsNotFound(err) || apierrors.IsConflict(err) {
		return nil // a newer version (or the deletion) will come through the informer
	}
	return err
}

func podIsRunning(pod *corev1.Pod, ip string) bool {
	if pod.Status.Phase != corev1.PodRunning || pod.Status.PodIP != ip {
		return false
	}
	if len(pod.Status.ContainerStatuses) != len(pod.Spec.Containers) {
		return false
	}
	for _, cs := range pod.Status.ContainerStatuses {
		if !cs.Ready || cs.State.Running == nil {
			return false
		}
	}
	for _, c := range pod.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

func (s *sim) logPath(ns, pod, container string) string {
	return filepath.Join(s.cfg.dataDir, "logs", ns+"_"+pod+"_"+container+".log")
}
