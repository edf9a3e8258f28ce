module github.com/weedblock/weedblock

go 1.26
