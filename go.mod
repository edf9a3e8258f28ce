module github.com/weedblock/weedblock

go 1.26

require github.com/golang/glog v1.2.5
