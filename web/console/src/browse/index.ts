// Browsing a cluster: the cluster, namespace, list and object views.
import "./clusterview";
import "./namespaceview";
import "./listview";
import "./objectview";
